"""Tests for edgefilter.eif (PAPER.md Eq. 1-7) against values worked in NumPy."""

from __future__ import annotations

import doctest
import math

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefilter.method import eif

# Few, small examples: the suite shares two cores with other work.
FAST = settings(max_examples=40, deadline=None)

# Fixed shape for hypothesis arrays so jitted functions compile once per test.
N = 16
bools = hnp.arrays(np.bool_, (N,))
r_sets = st.floats(0.02, 0.98)


def np_weighted_ce(logits, label_high, mask, r_set, weighted=True):
    """Independent NumPy reference of Eq. 6-7 in float64."""
    logits = np.asarray(logits, np.float64)
    label = np.asarray(label_high, bool)
    mask = np.asarray(mask, bool)
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    ce = -np.where(label, log_p[..., 1], log_p[..., 0])
    w_h, w_l = (1.0 / r_set, 1.0 / (1.0 - r_set)) if weighted else (1.0, 1.0)
    raw = np.where(label, w_h, w_l) * mask
    if raw.sum() == 0:
        return 0.0
    return float((raw * ce).sum() / raw.sum())


# --- Eq. 1 -------------------------------------------------------------------------------


def test_loss_labels_hand_values():
    losses = jnp.array([[0.1, 1.0], [2.5, 0.999]])
    out = eif.loss_labels(losses, 1.0)
    chex.assert_type(out, bool)
    chex.assert_shape(out, (2, 2))
    np.testing.assert_array_equal(out, [[False, True], [True, False]])  # 1.0 >= 1.0 is H


# --- Eq. 2 -------------------------------------------------------------------------------


def test_true_high_ratio_hand_values():
    pred = jnp.array([True, True, False, False, True])
    label = jnp.array([True, False, True, False, True])
    r = eif.true_high_ratio(pred, label)
    chex.assert_shape(r, ())
    chex.assert_type(r, jnp.float32)
    np.testing.assert_allclose(r, 2 / 5)


def test_true_high_ratio_window_shape():
    # n = 2 mini-batches of m = 4: denominator m * n = 8.
    pred = jnp.array([[True, False, False, False], [True, True, False, False]])
    label = jnp.array([[True, True, False, False], [False, True, True, True]])
    np.testing.assert_allclose(eif.true_high_ratio(pred, label), 2 / 8)


def test_true_high_ratio_unknown_labels_do_not_matter():
    # Predicted-L instances never reached the main net; whatever placeholder their label
    # holds, they only enlarge the denominator.
    pred = jnp.array([True, True, False, False])
    label_a = jnp.array([True, False, False, False])
    label_b = jnp.array([True, False, True, True])
    assert eif.true_high_ratio(pred, label_a) == eif.true_high_ratio(pred, label_b) == 0.25


def test_true_high_ratio_mask_excludes_from_both():
    pred = jnp.array([True, True, False, True, True, True])
    label = jnp.array([True, False, False, True, True, True])
    mask = jnp.array([True, True, True, True, False, False])  # last two: unfilled slots
    np.testing.assert_allclose(eif.true_high_ratio(pred, label, mask), 2 / 4)
    np.testing.assert_allclose(eif.true_high_ratio(pred, label, jnp.ones(6, bool)), 4 / 6)
    empty = eif.true_high_ratio(pred, label, jnp.zeros(6, bool))
    assert empty == 0.0 and np.isfinite(empty)


@FAST
@given(bools, bools, bools)
def test_true_high_ratio_matches_numpy(pred, label, mask):
    got = eif.true_high_ratio(pred, label, mask)
    want = (pred & label & mask).sum() / max(mask.sum(), 1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(eif.true_high_ratio(pred, label), (pred & label).mean(), 1e-6)


# --- Eq. 3 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("r_th", "want"),
    [(0.5, 2.0 * 1.2), (0.3, 2.0 * 1.2), (0.29, 2.0 * 0.8), (0.0, 2.0 * 0.8)],
)
def test_update_threshold_both_branches(r_th, want):
    out = eif.update_threshold(2.0, r_th, 0.3, 1.2, 0.8)
    chex.assert_shape(out, ())
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_update_threshold_jit_with_traced_r_set():
    f = jax.jit(eif.update_threshold)
    np.testing.assert_allclose(f(1.0, 0.4, 0.3, 1.5, 0.5), 1.5)
    np.testing.assert_allclose(f(1.0, 0.2, 0.3, 1.5, 0.5), 0.5)


# --- Eq. 4-5 -----------------------------------------------------------------------------


def test_prediction_entropy_hand_values():
    probs = jnp.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [0.25, 0.75]])
    h = eif.prediction_entropy(probs)
    chex.assert_shape(h, (4,))
    chex.assert_tree_all_finite(h)
    want = [math.log(2), 0.0, 0.0, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    np.testing.assert_allclose(h, want, rtol=1e-6, atol=1e-7)


def test_prediction_entropy_batch_shape_and_multiclass():
    probs = jnp.full((3, 2, 4), 0.25)
    h = eif.prediction_entropy(probs)
    chex.assert_shape(h, (3, 2))
    np.testing.assert_allclose(h, math.log(4), rtol=1e-6)


def test_prediction_entropy_grad_finite_at_one_hot():
    g = jax.grad(lambda p: eif.prediction_entropy(p).sum())(jnp.array([[1.0, 0.0]]))
    chex.assert_tree_all_finite(g)


@FAST
@given(st.floats(0.0, 1.0))
def test_prediction_entropy_two_class_bounds(p):
    probs = np.array([p, 1.0 - p], np.float32)
    h = float(eif.prediction_entropy(probs))
    assert 0.0 <= h <= math.log(2) + 1e-6
    want = -sum(q * math.log(q) for q in probs.astype(np.float64) if q > 0)
    np.testing.assert_allclose(h, want, rtol=1e-5, atol=1e-6)


def test_uncertainty_mask_hand_values():
    pred = jnp.array([True, False, False, False])
    ent = jnp.array([0.69, 0.69, 0.5, 0.1])
    out = eif.uncertainty_mask(pred, ent, 0.5)  # strict: 0.5 is not selected
    chex.assert_type(out, bool)
    np.testing.assert_array_equal(out, [False, True, False, False])


# --- predict_high ------------------------------------------------------------------------


def test_predict_high():
    logits = jnp.array([[[0.0, 1.0], [3.0, -1.0]], [[0.2, 0.2], [-5.0, -4.0]]])
    out = eif.predict_high(logits)
    chex.assert_shape(out, (2, 2))
    np.testing.assert_array_equal(out, [[True, False], [False, True]])  # tie -> L
    with pytest.raises(ValueError, match="size 2"):
        eif.predict_high(jnp.zeros((4, 3)))


# --- Eq. 6-7 -----------------------------------------------------------------------------


def test_filter_loss_weights_hand_values():
    # r_set = 0.25: raw w_H = 4, w_L = 4/3. Masked: H, H, L (the last L is masked out).
    label = jnp.array([True, True, False, False])
    mask = jnp.array([True, True, True, False])
    w = eif.filter_loss_weights(label, mask, 0.25)
    chex.assert_shape(w, (4,))
    chex.assert_type(w, jnp.float32)
    total = 4 + 4 + 4 / 3
    np.testing.assert_allclose(w, [4 / total, 4 / total, (4 / 3) / total, 0.0], rtol=1e-6)
    uniform = eif.filter_loss_weights(label, mask, 0.25, weighted=False)
    np.testing.assert_allclose(uniform, [1 / 3, 1 / 3, 1 / 3, 0.0], rtol=1e-6)


def test_filter_loss_hand_value():
    # Two instances, r_set = 0.5 (w_H = w_L): plain mean of the two CEs.
    logits = jnp.array([[0.0, math.log(3.0)], [0.0, 0.0]])  # p_H = 3/4, then 1/2
    label = jnp.array([True, False])
    out = eif.filter_loss(logits, label, jnp.array([True, True]), 0.5)
    chex.assert_shape(out, ())
    np.testing.assert_allclose(out, (-math.log(0.75) + math.log(2)) / 2, rtol=1e-6)


@FAST
@given(bools, bools, r_sets)
def test_weights_sum_to_one_and_group_ratio(label, mask, r_set):
    w = np.asarray(eif.filter_loss_weights(label, mask, r_set), np.float64)
    assert (w >= 0).all() and (w[~mask] == 0).all()
    n_h, n_l = int((label & mask).sum()), int((~label & mask).sum())
    if n_h + n_l == 0:
        np.testing.assert_array_equal(w, 0.0)
        return
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
    w_h, w_l = w[label & mask].sum(), w[~label & mask].sum()
    # What Eq. 7 guarantees: W_H / W_L = (n_H / r_set) / (n_L / (1 - r_set)), i.e.
    # W_H * n_L * r_set = W_L * n_H * (1 - r_set) (cross-multiplied: no division by 0).
    np.testing.assert_allclose(w_h * n_l * r_set, w_l * n_h * (1 - r_set), rtol=1e-4, atol=1e-7)


@FAST
@given(st.integers(1, 6), st.sampled_from([(1, 9), (1, 4), (1, 3), (2, 3), (1, 1), (3, 7)]))
def test_groups_weigh_equally_at_target_balance(k, ratio):
    # Equal group totals hold exactly when n_H : n_L = r_set : (1 - r_set).
    a, b = ratio
    r_set = a / (a + b)
    label = np.arange((a + b) * k) < a * k
    w = np.asarray(eif.filter_loss_weights(label, None, r_set), np.float64)
    np.testing.assert_allclose(w[label].sum(), 0.5, rtol=1e-5)
    np.testing.assert_allclose(w[~label].sum(), 0.5, rtol=1e-5)


@FAST
@given(
    hnp.arrays(np.float32, (N, 2), elements=st.floats(-8, 8, width=32)),
    bools,
    bools,
    r_sets,
    st.booleans(),
)
def test_filter_loss_matches_numpy(logits, label, mask, r_set, weighted):
    got = eif.filter_loss(logits, label, mask, r_set, weighted=weighted)
    want = np_weighted_ce(logits, label, mask, r_set, weighted)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_filter_loss_empty_mask_zero_and_zero_grad():
    logits = jnp.array([[1.0, -2.0], [0.3, 0.4], [5.0, 5.0]])
    label = jnp.array([True, False, True])
    mask = jnp.zeros(3, bool)
    loss, grad = jax.value_and_grad(eif.filter_loss)(logits, label, mask, 0.3)
    chex.assert_tree_all_finite((loss, grad))
    assert loss == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_filter_loss_masked_out_rows_get_no_grad():
    logits = jnp.array([[1.0, -2.0], [0.3, 0.4], [5.0, 5.0]])
    label = jnp.array([True, False, True])
    mask = jnp.array([True, False, True])
    grad = jax.grad(eif.filter_loss)(logits, label, mask, 0.3)
    np.testing.assert_array_equal(grad[1], 0.0)
    assert np.abs(grad[0]).sum() > 0


def test_filter_loss_none_mask_is_all():
    logits = jnp.array([[1.0, -2.0], [0.3, 0.4]])
    label = jnp.array([True, False])
    np.testing.assert_allclose(
        eif.filter_loss(logits, label, None, 0.3),
        eif.filter_loss(logits, label, jnp.ones(2, bool), 0.3),
    )


def test_filter_loss_batch_shape_and_bf16():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 2)).astype(np.float32)
    label = rng.random((3, 5)) < 0.3
    mask = rng.random((3, 5)) < 0.7
    out = eif.filter_loss(jnp.asarray(logits, jnp.bfloat16), label, mask, 0.3)
    chex.assert_shape(out, ())
    chex.assert_type(out, jnp.float32)
    want = np_weighted_ce(
        np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float32), label, mask, 0.3
    )
    np.testing.assert_allclose(out, want, rtol=1e-5)
    np.testing.assert_allclose(
        eif.filter_loss(logits, label, mask, 0.3),
        np_weighted_ce(logits, label, mask, 0.3),
        rtol=1e-5,
    )


def test_filter_loss_shape_errors():
    with pytest.raises(ValueError, match="size 2"):
        eif.filter_loss(jnp.zeros((4, 3)), jnp.zeros(4, bool), None, 0.3)
    with pytest.raises(ValueError, match="does not match"):
        eif.filter_loss(jnp.zeros((4, 2)), jnp.zeros(5, bool), None, 0.3)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, 2, True, np.float32(1.0)])
def test_r_set_validation(bad):
    with pytest.raises(ValueError, match="r_set"):
        eif.filter_loss(jnp.zeros((2, 2)), jnp.zeros(2, bool), None, bad)
    with pytest.raises(ValueError, match="r_set"):
        eif.filter_loss_weights(jnp.zeros(2, bool), None, bad)
    with pytest.raises(ValueError, match="r_set"):
        eif.update_threshold(1.0, 0.5, bad, 1.1, 0.9)


def test_r_set_as_an_array_is_checked_elementwise_and_a_string_is_a_type_error():
    with pytest.raises(ValueError, match=r"r_set .* got \[1.5\]"):
        eif.filter_loss_weights(jnp.zeros(2, bool), None, np.array([0.3, 1.5]))
    with pytest.raises(ValueError, match="r_set"):
        eif.update_threshold(1.0, 0.5, jnp.asarray(0.0), 1.1, 0.9)
    with pytest.raises(TypeError, match="r_set must be a real number"):
        eif.filter_loss_weights(jnp.zeros(2, bool), None, "0.3")
    weights = eif.filter_loss_weights(jnp.asarray([True, False]), None, np.array([0.25, 0.5]))
    np.testing.assert_allclose(weights, [4 / (4 + 2), 2 / (4 + 2)], rtol=1e-6)  # 1/r, 1/(1-r).


def test_a_mask_that_does_not_fit_the_instances_is_refused():
    with pytest.raises(ValueError, match=r"mask has shape \(3,\); it must broadcast to label_high"):
        eif.filter_loss_weights(jnp.zeros(4, bool), jnp.ones(3, bool), 0.3)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 4\)"):  # Would enlarge [4].
        eif.filter_loss(jnp.zeros((4, 2)), jnp.zeros(4, bool), jnp.ones((2, 4), bool), 0.3)
    with pytest.raises(ValueError, match="it must broadcast to pred_high"):
        eif.true_high_ratio(jnp.ones(4, bool), jnp.ones(4, bool), jnp.ones(5, bool))
    # A window mask over [n, m] may be given per chunk ([n, 1]): it broadcasts.
    ratio = eif.true_high_ratio(jnp.ones((2, 3), bool), jnp.ones((2, 3), bool), [[True], [False]])
    assert float(ratio) == 1.0


# --- jit, composition, recompilation ----------------------------------------------------


def test_one_filter_step_under_jit_without_retracing():
    """The module's documented composition, jitted, checked against the same steps in NumPy."""

    def step(logits, losses, threshold, r_set):
        pred_high = eif.predict_high(logits)
        probs = jax.nn.softmax(logits)
        unsure = eif.uncertainty_mask(pred_high, eif.prediction_entropy(probs), 0.6)
        label_high = eif.loss_labels(losses, threshold)
        seen = pred_high | unsure
        loss = eif.filter_loss(logits, label_high, seen, r_set)
        r_th = eif.true_high_ratio(pred_high, label_high)
        return loss, eif.update_threshold(threshold, r_th, r_set, 1.05, 0.95)

    traced = chex.assert_max_traces(step, n=1)
    jitted = jax.jit(traced)
    rng = np.random.default_rng(1)
    for _ in range(3):  # same shapes, new values and a new r_set: no retrace
        logits = rng.normal(size=(8, 2)).astype(np.float32)
        losses = rng.exponential(size=8).astype(np.float32)
        loss, new_t = jitted(logits, losses, jnp.float32(1.0), jnp.float32(rng.uniform(0.1, 0.9)))
        chex.assert_tree_all_finite((loss, new_t))

    # Same steps done by hand in NumPy for the last draw.
    r_set = float(rng.uniform(0.1, 0.9))
    loss, new_t = jitted(logits, losses, jnp.float32(1.0), jnp.float32(r_set))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pred = logits[:, 1] > logits[:, 0]
    ent = -(p * np.log(p)).sum(-1)
    seen = pred | (~pred & (ent > 0.6))
    label = losses >= 1.0
    np.testing.assert_allclose(loss, np_weighted_ce(logits, label, seen, r_set), rtol=1e-5)
    r_th = (pred & label).mean()
    np.testing.assert_allclose(new_t, 1.05 if r_th >= np.float32(r_set) else 0.95, rtol=1e-6)


def test_docstring_examples():
    globs = {"jnp": jnp, **{name: getattr(eif, name) for name in eif.__all__}}
    result = doctest.testmod(eif, extraglobs=globs, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0

"""Tests of edgefilter.instance_filter: the filter's state and its init/predict/update/end_window.

Every decision and update is checked against an independent computation: the filter's
logits from the model itself, then NumPy for quantiles, entropies and counters, and
``jax.grad`` of Eq. 6-7 written out here for the optimizer step.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from edgefilter import models
from edgefilter.method import instance_filter

M = 16  # Chunk size.
SHAPE = (28, 28, 1)
MODEL = models.create("lenet_slim", 2)


def _state(config, tx=None, seed=0):
    """A fresh filter whose margins spread over a few units and straddle zero."""
    tx = optax.sgd(0.1) if tx is None else tx
    state = instance_filter.init(MODEL, tx, jax.random.key(seed), SHAPE, config)
    params = jax.tree.map(jnp.asarray, state.net.params)
    params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"] * 20.0
    median = np.median(_margins(params, _chunk(99, 64)))
    params["Dense_1"]["bias"] = jnp.asarray([0.0, -median], jnp.float32)
    return state.replace(net=state.net.replace(params=params))


def _chunk(seed, n=M):
    """Images from NumPy's generator: jax.random compiles threefry for every new shape."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal((n, *SHAPE)), jnp.float32)


def _logits(params, x):
    return np.asarray(MODEL.apply({"params": params}, x, train=False), np.float64)


def _margins(params, x):
    logits = _logits(params, x)
    return logits[:, 1] - logits[:, 0]


def _np_entropy(logits):
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return -(p * np.log(p)).sum(-1)


# --- FilterConfig --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("r_set", 0.0, "r_set=0.0 must lie in (0, 1)"),
        ("r_set", 1.5, "r_set=1.5 must lie in (0, 1)"),
        ("r_set", float("nan"), "r_set=nan must lie in (0, 1)"),
        ("alpha1", 0.9, "alpha1=0.9 must be a finite number >= 1"),
        ("alpha1", float("inf"), "alpha1=inf must be a finite number >= 1"),
        ("alpha2", 0.0, "alpha2=0.0 must lie in (0, 1]"),
        ("alpha2", 1.2, "alpha2=1.2 must lie in (0, 1]"),
        ("window", 0, "window=0 must be a positive integer"),
        ("window", 2.5, "window=2.5 must be a positive integer"),
        ("entropy_threshold", -0.1, "entropy_threshold=-0.1 must lie in [0, ln 2 = 0.693]"),
        ("entropy_threshold", 0.7, "entropy_threshold=0.7 must lie in [0, ln 2 = 0.693]"),
        ("init_threshold", 0.0, "init_threshold=0.0 must be a finite number > 0"),
        ("init_threshold", float("inf"), "init_threshold=inf must be a finite number > 0"),
        ("label_rate", 0.0, "label_rate=0.0 must lie in (0, 1) or be None (= r_set)"),
        ("label_rate", 1.5, "label_rate=1.5 must lie in (0, 1) or be None (= r_set)"),
        ("control", "topk", "control='topk' must be one of quantile, argmax"),
    ],
)
def test_filter_config_rejects_bad_values_naming_the_field(field, value, message):
    with pytest.raises(ValueError) as info:
        instance_filter.FilterConfig(**{field: value})
    assert str(info.value).startswith(message)


def test_filter_config_rejects_a_switch_that_is_not_a_bool():
    with pytest.raises(TypeError, match="uncertainty='no' must be True or False"):
        instance_filter.FilterConfig(uncertainty="no")


def test_filter_config_accepts_the_boundaries_of_the_allowed_ranges():
    instance_filter.FilterConfig(
        alpha1=1.0, alpha2=1.0, window=1, entropy_threshold=0.0, control="argmax"
    )


# --- init ----------------------------------------------------------------------------------


def test_init_gives_an_empty_window_and_the_initial_threshold():
    config = instance_filter.FilterConfig(window=3, init_threshold=2.5)
    state = instance_filter.init(MODEL, optax.sgd(0.1), jax.random.key(0), SHAPE, config)
    assert float(state.threshold) == 2.5 and float(state.offset) == 0.0
    for name in ("streamed", "predicted_high", "true_high", "known", "wrong", "sampled"):
        value = getattr(state, name)
        chex.assert_shape(value, ())
        assert value.dtype == jnp.int32 and int(value) == 0, name
    assert int(state.net.step) == 0


# --- predict -------------------------------------------------------------------------------


@pytest.mark.parametrize("r_set", [0.25, 0.3, 0.5])
def test_quantile_control_keeps_r_set_of_each_chunk(r_set):
    config = instance_filter.FilterConfig(r_set=r_set)
    state = _state(config)
    x = _chunk(1)
    margin = _margins(state.net.params, x)
    state, out = instance_filter.predict(state, x, jnp.ones(M, bool), config)
    # The offset is the (1 - r_set) quantile of the chunk's own margins.
    np.testing.assert_allclose(state.offset, np.quantile(margin, 1 - r_set), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.pred_high, margin > float(state.offset))
    # Linear interpolation puts the quantile between sorted[k] and sorted[k + 1].
    k = math.floor((1 - r_set) * (M - 1))
    assert int(np.sum(out.pred_high)) == M - 1 - k
    assert abs(int(np.sum(out.pred_high)) - r_set * M) < 1
    assert int(state.predicted_high) == M - 1 - k and int(state.streamed) == M


def test_argmax_control_predicts_high_where_the_margin_is_positive():
    config = instance_filter.FilterConfig(control="argmax")
    state = _state(config)
    x = _chunk(2)
    margin = _margins(state.net.params, x)
    assert 0 < np.sum(margin > 0) < M  # The decision is not trivial.
    state, out = instance_filter.predict(state, x, jnp.ones(M, bool), config)
    np.testing.assert_array_equal(out.pred_high, margin > 0)
    assert float(state.offset) == 0.0


@pytest.mark.parametrize("control", ["quantile", "argmax"])
def test_padding_is_never_predicted_high_nor_sampled_nor_quantiled(control):
    config = instance_filter.FilterConfig(control=control, entropy_threshold=0.0)
    state = _state(config)
    x = _chunk(3)
    margin = _margins(state.net.params, x)
    # The padding slots hold the chunk's highest-margin instances: they would be H.
    valid = np.ones(M, bool)
    valid[np.argsort(margin)[-5:]] = False
    state, out = instance_filter.predict(state, x, jnp.asarray(valid), config)
    assert not np.any(np.asarray(out.pred_high)[~valid])
    assert not np.any(np.asarray(out.uncertain)[~valid])
    assert int(state.streamed) == valid.sum()
    if control == "quantile":
        np.testing.assert_allclose(
            state.offset, np.quantile(margin[valid], 1 - config.r_set), rtol=1e-5, atol=1e-5
        )
        assert np.sum(out.pred_high) == np.sum(margin[valid] > float(state.offset)) > 0


@pytest.mark.parametrize("control", ["quantile", "argmax"])
def test_uncertain_is_predicted_low_with_entropy_above_the_threshold(control):
    state = _state(instance_filter.FilterConfig(control=control))
    x = _chunk(4)
    logits = _logits(state.net.params, x)
    entropy = _np_entropy(logits)
    # A threshold halfway between two neighbouring entropies: no instance sits on it.
    ordered = np.sort(entropy)
    threshold = float((ordered[M // 2] + ordered[M // 2 + 1]) / 2)
    config = instance_filter.FilterConfig(control=control, entropy_threshold=threshold)
    valid = np.arange(M) < M - 2
    state, out = instance_filter.predict(state, x, jnp.asarray(valid), config)
    np.testing.assert_allclose(out.entropy, entropy, atol=1e-5)
    pred_high = np.asarray(out.pred_high)
    expected = ~pred_high & (entropy > threshold) & valid
    assert expected.any() and (~pred_high & valid & ~expected).any()  # Both cases occur.
    np.testing.assert_array_equal(out.uncertain, expected)
    assert int(state.sampled) == expected.sum()

    off = instance_filter.FilterConfig(
        control=control, entropy_threshold=threshold, uncertainty=False
    )
    _, out = instance_filter.predict(_state(off), x, jnp.asarray(valid), off)
    assert not np.any(out.uncertain)


def test_quantile_offset_depends_on_the_arriving_chunk_only():
    config = instance_filter.FilterConfig(r_set=0.25)
    state = _state(config)
    first, second = _chunk(10), _chunk(11)
    fresh, out_fresh = instance_filter.predict(state, second, jnp.ones(M, bool), config)
    state, _ = instance_filter.predict(state, first, jnp.ones(M, bool), config)
    state, out = instance_filter.predict(state, second, jnp.ones(M, bool), config)
    np.testing.assert_array_equal(out.pred_high, out_fresh.pred_high)
    assert float(state.offset) == float(fresh.offset)
    np.testing.assert_allclose(
        state.offset, np.quantile(_margins(state.net.params, second), 0.75), rtol=1e-5, atol=1e-5
    )
    # The window counters add up over both chunks.
    assert int(state.streamed) == 2 * M and int(state.predicted_high) == 2 * 4


# --- update --------------------------------------------------------------------------------

LOSSES = np.array([0.2, 1.0, 2.5, 0.99, 3.0, 0.5, 1.5, 0.1, 4.0, 0.7, 1.2, 0.3], np.float32)
PRED = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 0], bool)
MASK = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)


def _eq67(logits, label_high, mask, r_set, weighted):
    """Eq. 6-7 written out: class weights 1/R_set, 1/(1-R_set), normalised over the mask."""
    raw = jnp.where(label_high, 1.0 / r_set, 1.0 / (1.0 - r_set)) if weighted else 1.0
    w = raw * mask
    w = w / jnp.sum(w)
    log_p = jax.nn.log_softmax(logits)
    return -jnp.sum(w * jnp.where(label_high, log_p[:, 1], log_p[:, 0]))


@pytest.mark.parametrize("weighted", [True, False])
def test_update_is_one_sgd_step_on_the_weighted_loss_of_eq_6_7(weighted):
    config = instance_filter.FilterConfig(r_set=0.3, weighted=weighted, init_threshold=1.0)
    state = _state(config)
    x = _chunk(5, len(LOSSES))
    label = LOSSES >= 1.0  # Eq. 1: the instance at exactly T_l is H.
    params0 = jax.tree.map(np.array, state.net.params)

    def loss(p):
        return _eq67(MODEL.apply({"params": p}, x), label, MASK, 0.3, weighted)

    loss0, grads = jax.jit(jax.value_and_grad(loss))(params0)
    expected = jax.tree.map(lambda w, g: w - 0.1 * np.asarray(g), params0, grads)
    new, metrics = instance_filter.update(state, x, LOSSES, PRED, MASK, config)
    chex.assert_trees_all_close(new.net.params, expected, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(metrics["filter_loss"], loss0, rtol=1e-5)
    assert int(new.net.step) == 1
    np.testing.assert_allclose(
        metrics["label_high_fraction"], np.sum(label & MASK) / np.sum(MASK), rtol=1e-6
    )


def test_update_accumulates_the_window_counters():
    config = instance_filter.FilterConfig(init_threshold=1.0)
    state = _state(config).replace(
        true_high=jnp.asarray(2, jnp.int32),
        known=jnp.asarray(5, jnp.int32),
        wrong=jnp.asarray(1, jnp.int32),
        main_loss_sum=jnp.asarray(3.0, jnp.float32),
        threshold=jnp.asarray(1.0, jnp.float32),
        random_known=jnp.asarray(1, jnp.int32),
    )
    x = _chunk(6, len(LOSSES))
    # Randomly sampled predicted-L instances (one of them padding: not counted).
    random = ~PRED & np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1], bool)
    state, _ = instance_filter.update(state, x, LOSSES, PRED, MASK, config, random)
    label = LOSSES >= 1.0
    assert int(state.random_known) == 1 + np.sum(random & MASK) == 1 + 3
    assert int(state.random_high) == np.sum(random & MASK & label) == 1
    assert int(state.true_high) == 2 + np.sum(PRED & label & MASK)
    assert int(state.known) == 5 + MASK.sum()
    assert int(state.wrong) == 1 + np.sum((label != PRED) & MASK)
    np.testing.assert_allclose(state.main_loss_sum, 3.0 + LOSSES[MASK].sum(), rtol=1e-6)
    # update labels; it does not touch what predict counted nor T_l.
    assert int(state.streamed) == 0 and int(state.predicted_high) == 0
    assert float(state.threshold) == 1.0


def test_update_labels_with_the_current_threshold():
    config = instance_filter.FilterConfig()
    state = _state(config).replace(threshold=jnp.asarray(2.0, jnp.float32))
    x = _chunk(7, len(LOSSES))
    all_high = np.ones(len(LOSSES), bool)
    state, metrics = instance_filter.update(state, x, LOSSES, all_high, MASK, config)
    label = LOSSES >= 2.0
    assert int(state.true_high) == np.sum(label & MASK)
    np.testing.assert_allclose(
        metrics["label_high_fraction"], np.sum(label & MASK) / MASK.sum(), rtol=1e-6
    )


# --- end_window ----------------------------------------------------------------------------


def _window_state(config, true_high):
    state = _state(config)
    return state.replace(
        threshold=jnp.asarray(2.0, jnp.float32),
        offset=jnp.asarray(0.25, jnp.float32),
        streamed=jnp.asarray(20, jnp.int32),
        predicted_high=jnp.asarray(8, jnp.int32),
        true_high=jnp.asarray(true_high, jnp.int32),
        known=jnp.asarray(12, jnp.int32),
        wrong=jnp.asarray(3, jnp.int32),
        sampled=jnp.asarray(4, jnp.int32),
        main_loss_sum=jnp.asarray(6.0, jnp.float32),
    )


@pytest.mark.parametrize(
    "true_high, factor",
    [(7, 1.25), (6, 1.25), (5, 0.8)],  # R_TH = 0.35, 0.30 (= R_set: alpha1), 0.25.
)
def test_end_window_applies_eq_2_and_3_and_resets_the_counters(true_high, factor):
    config = instance_filter.FilterConfig(r_set=0.3, alpha1=1.25, alpha2=0.8)
    state = _window_state(config, true_high)
    new, metrics = instance_filter.end_window(state, config)
    np.testing.assert_allclose(metrics["r_th"], true_high / 20, rtol=1e-6)
    np.testing.assert_allclose(new.threshold, 2.0 * factor, rtol=1e-6)
    np.testing.assert_allclose(metrics["threshold"], 2.0 * factor, rtol=1e-6)
    np.testing.assert_allclose(metrics["predicted_high_fraction"], 8 / 20, rtol=1e-6)
    np.testing.assert_allclose(metrics["wrong_prediction_ratio"], 3 / 12, rtol=1e-6)
    np.testing.assert_allclose(metrics["sampled_fraction"], 4 / 20, rtol=1e-6)
    np.testing.assert_allclose(metrics["main_loss"], 6.0 / 12, rtol=1e-6)
    for name in (
        "streamed",
        "predicted_high",
        "true_high",
        "known",
        "wrong",
        "sampled",
        "random_known",
        "random_high",
    ):
        assert int(getattr(new, name)) == 0, name
    assert float(new.main_loss_sum) == 0.0
    # What lives across windows is kept: the last offset and the network.
    assert float(new.offset) == 0.25
    chex.assert_trees_all_equal(new.net.params, state.net.params)
    assert new.threshold.dtype == jnp.float32


@pytest.mark.parametrize(
    "random_high, control, factor",
    [
        # 20 streamed, 6 predicted H of which 4 labelled H (R_TH = 0.2 < R_set = 0.3);
        # 2 of 5 random predicted-L samples are H: 0.2 + 14/20 * 0.4 = 0.48 >= 0.3.
        (2, "quantile", 1.25),
        (0, "quantile", 0.8),  # 0.2 + 0 = 0.2 < 0.3.
        (2, "argmax", 0.8),  # The paper's rule on R_TH alone.
    ],
)
def test_quantile_control_adapts_t_l_to_the_estimated_high_fraction(random_high, control, factor):
    config = instance_filter.FilterConfig(r_set=0.3, alpha1=1.25, alpha2=0.8, control=control)
    state = _window_state(config, 4).replace(
        predicted_high=jnp.asarray(6, jnp.int32),
        random_known=jnp.asarray(5, jnp.int32),
        random_high=jnp.asarray(random_high, jnp.int32),
    )
    new, metrics = instance_filter.end_window(state, config)
    np.testing.assert_allclose(metrics["r_th"], 0.2, rtol=1e-6)
    np.testing.assert_allclose(
        metrics["high_rate_estimate"], 0.2 + 14 / 20 * random_high / 5, rtol=1e-6
    )
    np.testing.assert_allclose(new.threshold, 2.0 * factor, rtol=1e-6)
    assert int(metrics["random_sampled"]) == 5
    assert int(new.random_known) == 0 and int(new.random_high) == 0


@pytest.mark.parametrize(
    "label_rate, control, factor",
    [
        # Estimated H fraction 0.2 + 14/20 * 0/5 = 0.2 (see above).
        (0.15, "quantile", 1.25),  # 0.2 >= 0.15: T_l rises.
        (0.25, "quantile", 0.8),  # 0.2 < 0.25: T_l falls.
        (None, "quantile", 0.8),  # None means r_set = 0.3.
        (0.15, "argmax", 0.8),  # Ignored under argmax: R_TH = 0.2 < R_set.
    ],
)
def test_label_rate_is_the_threshold_target_under_quantile_control(label_rate, control, factor):
    config = instance_filter.FilterConfig(
        r_set=0.3, alpha1=1.25, alpha2=0.8, control=control, label_rate=label_rate
    )
    assert config.threshold_target == (
        label_rate if control == "quantile" and label_rate is not None else 0.3
    )
    state = _window_state(config, 4).replace(
        predicted_high=jnp.asarray(6, jnp.int32), random_known=jnp.asarray(5, jnp.int32)
    )
    new, _ = instance_filter.end_window(state, config)
    np.testing.assert_allclose(new.threshold, 2.0 * factor, rtol=1e-6)


def test_static_threshold_keeps_t_l():
    config = instance_filter.FilterConfig(r_set=0.3, alpha1=1.25, alpha2=0.8, static_threshold=True)
    for true_high in (2, 12):
        new, metrics = instance_filter.end_window(_window_state(config, true_high), config)
        assert float(new.threshold) == 2.0 and float(metrics["threshold"]) == 2.0
        assert int(new.true_high) == 0


def test_end_window_of_an_empty_window_lowers_the_threshold_without_nan():
    config = instance_filter.FilterConfig(alpha2=0.5)
    state = _state(config)
    new, metrics = instance_filter.end_window(state, config)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["r_th"]) == 0.0
    np.testing.assert_allclose(new.threshold, 0.5 * config.init_threshold)


def test_end_window_is_jittable_and_compiles_once():
    config = instance_filter.FilterConfig()
    step = jax.jit(lambda s: instance_filter.end_window(s, config))
    state = _window_state(config, 7)
    for _ in range(3):
        state, _ = step(state)
    assert step._cache_size() == 1

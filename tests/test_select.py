"""Tests of edgefilter.select: the selection interface, EIF and uniform selection.

Hand-worked chunks: a linear "filter" whose margin is the first pixel, so which instances
are kept, sampled and probed can be worked out with NumPy; and a user's own jitted flax
loop over a learnable stream, in which T_l must track while the kept fraction stays R_set.
"""

from __future__ import annotations

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from edgefilter import select as select_lib
from edgefilter.method import instance_filter
from tests.conftest import learnable_images


class FirstPixelFilter(nn.Module):
    """2-way logits ``[0, x[0]]``: the margin of instance i is its first pixel."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        w = self.param("w", nn.initializers.zeros, (1,))
        first = x.reshape(len(x), -1)[:, 0] * (1.0 + w[0])
        return jnp.stack([jnp.zeros_like(first), first], axis=-1)


def _chunk(margins: list[float]) -> jax.Array:
    x = np.zeros((len(margins), 2, 2, 1), np.float32)
    x[:, 0, 0, 0] = margins
    return jnp.asarray(x)


def _entropy(margin: np.ndarray) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-margin))
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def test_eif_select_keeps_the_top_r_set_margins_and_probes_the_uncertain_low_ones():
    margins = [3.0, -0.1, 0.2, -4.0, 1.0, 0.05, -2.0, 0.4, -0.3, 2.0]
    config = instance_filter.FilterConfig(r_set=0.3, entropy_threshold=0.6)
    sel = select_lib.eif(
        FirstPixelFilter(), optax.sgd(0.1), config, chunk_size=10, probe_size=3, random_probes=1
    )
    x = _chunk(margins)
    state = sel.init(jax.random.key(0), x)
    choice, state = jax.jit(sel.select)(state, x, jax.random.key(1))
    # round(0.3 * 10) = 3 kept: the margins 3.0, 2.0, 1.0 (indices 0, 9, 4).
    assert sel.train_size == 3 and sel.probe_size == 3
    np.testing.assert_array_equal(np.sort(np.asarray(choice.train_idx)), [0, 4, 9])
    np.testing.assert_array_equal(choice.train_weight, [1.0, 1.0, 1.0])
    # Predicted L with entropy above 0.6 nats: |margin| small. NumPy's entropies:
    low = np.setdiff1d(np.arange(10), [0, 4, 9])
    unsure = set(low[_entropy(np.asarray(margins)[low]) > 0.6].tolist())
    assert unsure == {1, 2, 5, 7, 8}
    probe_idx = np.asarray(choice.probe_idx)
    random_probe, uncertain_probes = probe_idx[0], probe_idx[1:]
    assert random_probe in low  # one random predicted-L instance ...
    # ... then the two most uncertain of the others (entropy largest at margin 0).
    rest = sorted(unsure - {int(random_probe)}, key=lambda i: abs(margins[i]))
    np.testing.assert_array_equal(uncertain_probes, rest[:2])
    np.testing.assert_array_equal(choice.probe_weight, [1.0, 1.0, 1.0])
    assert int(state.filter.streamed) == 10 and int(state.filter.predicted_high) == 3
    assert int(state.filter.sampled) == 5
    np.testing.assert_allclose(state.filter.offset, 1.0)  # The smallest kept margin.


def test_eif_predict_ahead_ranks_a_chunk_by_the_block_prediction_it_is_given():
    config = instance_filter.FilterConfig(r_set=0.3)
    sel = select_lib.eif(
        FirstPixelFilter(), optax.sgd(0.1), config, chunk_size=10, predict_ahead=True
    )
    default = select_lib.eif(FirstPixelFilter(), optax.sgd(0.1), config, chunk_size=10)
    assert default.predict_block is None  # The paper's filter predicts chunk by chunk.
    first, second = np.arange(10.0), np.arange(10.0)[::-1].copy()
    block = jnp.stack([_chunk(first.tolist()), _chunk(second.tolist())])
    state = sel.init(jax.random.key(0), block[0])
    predicted = jax.jit(sel.predict_block)(state, block)
    # The filter's logits [0, first pixel] for both chunks, in one [2, 10, 2] array.
    np.testing.assert_allclose(predicted[..., 1], np.stack([first, second]))
    np.testing.assert_allclose(predicted[..., 0], 0.0)
    # Given the second chunk's prediction, select ranks the first chunk by it: the three
    # largest predicted margins are at slots 0, 1, 2 (x alone would keep 7, 8, 9).
    choice, _ = jax.jit(sel.select)(state, block[0], jax.random.key(1), predicted=predicted[1])
    np.testing.assert_array_equal(np.sort(np.asarray(choice.train_idx)), [0, 1, 2])
    choice, _ = jax.jit(sel.select)(state, block[0], jax.random.key(1))
    np.testing.assert_array_equal(np.sort(np.asarray(choice.train_idx)), [7, 8, 9])


def test_eif_select_never_keeps_padding_and_pads_with_weight_zero():
    config = instance_filter.FilterConfig(r_set=0.5, entropy_threshold=0.0)
    sel = select_lib.eif(FirstPixelFilter(), optax.sgd(0.1), config, chunk_size=6, probe_size=2)
    x = _chunk([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    valid = jnp.asarray([False, False, False, False, True, True])  # A short last chunk.
    state = sel.init(jax.random.key(0), x)
    choice, state = sel.select(state, x, jax.random.key(1), valid)
    kept = np.asarray(choice.train_idx)[np.asarray(choice.train_weight) > 0]
    np.testing.assert_array_equal(np.sort(kept), [4, 5])  # Only 2 valid of 3 slots.
    assert float(choice.train_weight.sum()) == 2.0
    assert float(choice.probe_weight.sum()) == 0.0  # Nothing valid is left to probe.
    assert int(state.filter.streamed) == 2


def _update_by_hand(fstate, x, choice, train_losses, probe_losses, config, random_probes):
    """instance_filter.update on the chosen instances, composed by hand."""
    known = jnp.concatenate([choice.train_idx, choice.probe_idx])
    k, p = len(choice.train_idx), len(choice.probe_idx)
    return instance_filter.update(
        fstate,
        x[known],
        jnp.concatenate([train_losses, probe_losses]),
        jnp.arange(k + p) < k,
        jnp.concatenate([choice.train_weight, choice.probe_weight]) > 0,
        config,
        jnp.concatenate([jnp.zeros(k, bool), jnp.arange(p) < random_probes]),
    )


def test_eif_observe_is_instance_filter_update_then_end_window_every_n_chunks():
    config = instance_filter.FilterConfig(r_set=0.3, window=2, init_threshold=0.5)
    sel = select_lib.eif(
        FirstPixelFilter(), optax.sgd(0.1), config, chunk_size=10, probe_size=2, random_probes=1
    )
    x = _chunk([3.0, -0.1, 0.2, -4.0, 1.0, 0.05, -2.0, 0.4, -0.3, 2.0])
    train_losses, probe_losses = jnp.asarray([1.0, 0.2, 0.9]), jnp.asarray([0.7, 0.1])
    observe = jax.jit(sel.observe)
    state = sel.init(jax.random.key(0), x)
    choice, state = sel.select(state, x, jax.random.key(1))
    expected, expected_metrics = _update_by_hand(
        state.filter, x, choice, train_losses, probe_losses, config, 1
    )
    state, metrics = observe(state, x, choice, train_losses, probe_losses)
    assert not bool(metrics["window_closed"])
    np.testing.assert_allclose(metrics["filter_loss"], expected_metrics["filter_loss"], rtol=1e-6)
    assert int(state.filter.true_high) == int(expected.true_high) == 2  # 1.0, 0.9 >= 0.5.
    assert int(state.filter.random_high) == 1 and int(state.filter.random_known) == 1
    assert float(state.filter.threshold) == 0.5  # The window is still open.
    # The second chunk closes the window of 2 chunks: Eq. 2-3, then the counters reset.
    choice, state = sel.select(state, x, jax.random.key(2))
    expected, _ = _update_by_hand(state.filter, x, choice, train_losses, probe_losses, config, 1)
    expected, expected_window = instance_filter.end_window(expected, config)
    state, metrics = observe(state, x, choice, train_losses, probe_losses)
    assert bool(metrics["window_closed"]) and int(state.chunk) == 2
    for name, value in expected_window.items():
        np.testing.assert_allclose(metrics[f"window/{name}"], value, rtol=1e-6)
    np.testing.assert_allclose(state.filter.threshold, expected.threshold, rtol=1e-6)
    assert float(state.filter.threshold) != 0.5
    assert int(state.filter.streamed) == 0 and int(state.filter.known) == 0
    assert observe._cache_size() == 1  # One compilation for both chunks.


def test_loss_history_keeps_the_largest_rank_sums_and_records_the_losses_it_learns():
    margins = [0.5, 2.0, -1.0, 1.0, 0.0, 3.0]  # ranks in the chunk: 2, 4, 0, 3, 1, 5
    config = instance_filter.FilterConfig(r_set=0.5, entropy_threshold=0.0)
    inner = select_lib.eif(
        FirstPixelFilter(), optax.sgd(0.1), config, chunk_size=6, probe_size=1, random_probes=1
    )
    sel = select_lib.with_loss_history(inner, num_train=20)
    assert sel.needs_indices and (sel.train_size, sel.probe_size) == (3, 1)
    x, indices = _chunk(margins), jnp.arange(10, 16, dtype=jnp.int32)
    history = np.full(20, -1.0, np.float32)  # -1: never recorded.
    history[[10, 11, 13, 14, 15]] = [2.5, 0.1, 0.2, 0.3, 0.4]  # 12 unseen: ranks first.
    state = sel.init(jax.random.key(0), x).replace(losses=jnp.asarray(history))
    choice, state = jax.jit(sel.select)(state, x, jax.random.key(1), indices=indices)
    # History ranks 4, 0, 5, 1, 2, 3; rank sums 6, 4, 5, 4, 3, 8: slots 5, 0, 2 are kept
    # (the margins alone would keep 5, 1, 3).
    np.testing.assert_array_equal(np.sort(np.asarray(choice.train_idx)), [0, 2, 5])
    assert int(choice.probe_idx[0]) in (1, 3, 4)  # The random predicted-L probe.
    train_losses, probe_losses = jnp.asarray([0.7, 0.8, 0.9]), jnp.asarray([0.05])
    state, metrics = sel.observe(state, x, choice, train_losses, probe_losses)
    expected = history.copy()
    expected[10 + np.asarray(choice.train_idx)] = [0.7, 0.8, 0.9]
    expected[10 + np.asarray(choice.probe_idx)] = 0.05
    np.testing.assert_array_equal(state.losses, expected)
    assert int(metrics["trained"]) == 3 and int(state.inner.chunk) == 1


def test_loss_history_records_nothing_for_padding_slots():
    config = instance_filter.FilterConfig(r_set=0.5, entropy_threshold=0.0)
    inner = select_lib.eif(FirstPixelFilter(), optax.sgd(0.1), config, chunk_size=6, probe_size=2)
    sel = select_lib.with_loss_history(inner, num_train=6)
    x = _chunk([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    valid = jnp.asarray([False, False, False, False, True, True])  # A short last chunk.
    state = sel.init(jax.random.key(0), x)
    choice, state = sel.select(state, x, jax.random.key(1), valid, indices=jnp.arange(6))
    state, _ = sel.observe(state, x, choice, jnp.full(3, 0.5), jnp.full(2, 0.25))
    np.testing.assert_array_equal(state.losses, [-1, -1, -1, -1, 0.5, 0.5])


def test_uniform_selects_r_set_of_the_valid_instances_without_repeats():
    sel = select_lib.uniform(0.3, chunk_size=64)
    state = sel.init(jax.random.key(0), jnp.zeros((64, 1)))
    seen = np.zeros(64)
    for i in range(50):
        choice, state = sel.select(state, jnp.zeros((64, 1)), jax.random.key(i))
        idx = np.asarray(choice.train_idx)
        assert len(set(idx.tolist())) == 19 and choice.probe_idx.shape == (0,)
        seen[idx] += 1
    assert seen.min() > 0  # Every position is drawn at some point (950 draws over 64).


def test_argmax_control_is_refused_with_a_clear_message():
    config = instance_filter.FilterConfig(control="argmax")
    with pytest.raises(ValueError, match="control='argmax'.*quantile"):
        select_lib.eif(FirstPixelFilter(), optax.sgd(0.1), config, chunk_size=64)


def _readme_user_loop() -> str:
    """The README's "A user's own loop" code block, as written there."""
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index("```python\n# A user's own loop")
    return readme[start + len("```python\n") : readme.index("```", start + 3)]


def test_the_readme_user_loop_adopts_eif_and_emp_and_t_l_tracks():
    namespace = {"key": jax.random.key(0)}
    exec(_readme_user_loop(), namespace)  # Defines model, sel, step, the states, ...
    step, m = namespace["step"], namespace["m"]
    params, opt_state, sel_state = (namespace[k] for k in ("params", "opt_state", "sel_state"))
    images, labels = learnable_images(640, 0)
    images = images.astype(np.float32) / 255.0
    chunks, thresholds, kept, trained = 100, [], [], 0
    rng = np.random.default_rng(0)
    for i in range(chunks):
        idx = rng.choice(len(images), m, replace=False)
        x, y = jnp.asarray(images[idx]), jnp.asarray(labels[idx])
        key = jax.random.fold_in(jax.random.key(1), i)
        params, opt_state, sel_state, metrics = step(params, opt_state, sel_state, x, y, key)
        trained += int(np.sum(np.asarray(metrics["trained"])))
        if bool(metrics["window_closed"]):
            thresholds.append(float(metrics["window/threshold"]))
            kept.append(float(metrics["window/predicted_high_fraction"]))
    assert step._cache_size() == 1
    # EMP prunes the main network only: its second conv's backward ranks the error
    # channels with one top_k (Eq. 11-13) that the same step without EMP lacks.
    plain = {"key": jax.random.key(0)}
    snippet = _readme_user_loop()
    without_emp = snippet.replace("with ef.emp.pruning(", "with contextlib.nullcontext(")
    exec("import contextlib\n" + without_emp, plain)
    args = (params, opt_state, sel_state, x, y, key)
    top_ks = [str(jax.make_jaxpr(s)(*args)).count(" top_k[") for s in (step, plain["step"])]
    assert top_ks[0] == top_ks[1] + 1, top_ks
    body = _readme_user_loop().split("def step(")[1]
    assert sum("# EIF" in line for line in body.splitlines()) == 3  # The budget.
    assert trained == chunks * round(0.3 * m)  # round(0.3 * 64) = 19 per chunk ...
    np.testing.assert_allclose(kept, 19 / 64)  # ... and the filter's kept fraction holds.
    ratio = np.asarray(thresholds) / 1.0  # FilterConfig's init_threshold.
    assert len(ratio) == chunks // 10  # One window every 10 chunks.
    assert ratio.min() > 0.25 and ratio.max() < 4.0, ratio  # T_l tracks.

"""Tests of edgefilter.training.engine and its runner: the on-device stream engine.

The engine's block (a scan over chunks) is held to a Python loop written here over the
same selection interface (select, gather, probe forward, one SGD step, observe); the
runner's end-to-end run to its counts and its compiled versions (resume after SIGKILL:
tests/test_experiments_train.py, on the engine with the filter).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from edgefilter import models, select
from edgefilter.method import instance_filter
from edgefilter.training import config as config_lib
from edgefilter.training import engine, loop, runners
from edgefilter.training import steps as steps_lib

M, BLOCK = 16, 2


def _eif_selector(r_set=0.25, probe_size=2, predict_ahead=False):
    return select.eif(
        models.create("lenet_slim", 2),
        optax.sgd(0.1, momentum=0.5),
        instance_filter.FilterConfig(r_set=r_set, window=2),
        chunk_size=M,
        probe_size=probe_size,
        predict_ahead=predict_ahead,
    )


def _fresh(selector, info):
    model = models.create("lenet_slim", info.num_classes)
    state = steps_lib.create_train_state(
        model, optax.sgd(0.05, momentum=0.9), jax.random.key(1), info.image_shape
    )
    example = jnp.zeros((M, *info.image_shape))
    return engine.EngineState(main=state, selector=selector.init(jax.random.key(2), example))


def _block(dataset, first_chunk, valid_last=M):
    idx = np.arange(first_chunk * M, (first_chunk + BLOCK) * M).reshape(BLOCK, M)
    valid = np.ones((BLOCK, M), bool)
    valid[-1, valid_last:] = False
    return (
        dataset.train_images[idx],
        dataset.train_labels[idx],
        valid,
        np.arange(first_chunk, first_chunk + BLOCK, dtype=np.int32),
    )


def _python_loop(selector, info, state, images, labels, valid, chunks, root):
    """The interface's contract, chunk by chunk, as a user's loop would call it (with
    ``predict_block``: once, from the state before the first chunk)."""
    select_fn, observe_fn = jax.jit(selector.select), jax.jit(selector.observe)
    train_fn = jax.jit(functools.partial(steps_lib.train_step_body, info=info))
    probe_fn = jax.jit(
        lambda main, x: main.apply_fn(
            {"params": main.params, "batch_stats": main.batch_stats}, x, train=False
        )
    )
    trained, needs = [], [{} for _ in chunks]
    if selector.predict_block is not None:
        x_block = jnp.stack([steps_lib.preprocess(i, info, None) for i in images])
        predicted = jax.jit(selector.predict_block)(state.selector, x_block)
        needs = [{"predicted": p} for p in predicted]
    for b in range(len(chunks)):
        x = steps_lib.preprocess(images[b], info, None)
        key = engine.chunk_key(root, chunks[b])
        choice, sel_state = select_fn(state.selector, x, key, jnp.asarray(valid[b]), **needs[b])
        train_idx, probe_idx = np.asarray(choice.train_idx), np.asarray(choice.probe_idx)
        main, probe_losses = state.main, jnp.zeros((0,))
        if len(probe_idx):
            logits = probe_fn(main, steps_lib.preprocess(images[b][probe_idx], info, None))
            probe_losses = optax.softmax_cross_entropy_with_integer_labels(
                logits, labels[b][probe_idx]
            )
        main, _, train_losses = train_fn(
            main, images[b][train_idx], labels[b][train_idx], choice.train_weight, root
        )
        sel_state, metrics = observe_fn(sel_state, x, choice, train_losses, probe_losses)
        state = engine.EngineState(main=main, selector=sel_state)
        trained.append(int(metrics["trained"]))
    return state, trained


@pytest.mark.parametrize(
    "make_selector",
    [
        _eif_selector,
        functools.partial(_eif_selector, predict_ahead=True),
        lambda: select.uniform(0.5, chunk_size=M),
    ],
)
def test_a_block_equals_a_python_loop_over_the_interface(tiny_dataset, make_selector):
    selector, info = make_selector(), tiny_dataset.info
    root = jax.random.key(3)
    block_step = engine.make_block_step(selector, info)
    state = _fresh(selector, info)
    expected = _python_loop(selector, info, state, *_block(tiny_dataset, 0, 10), root)
    # The loop above reads `state`; the block step donates it, so it goes second.
    got, metrics = block_step(state, *_block(tiny_dataset, 0, 10), root)
    expected_state, trained = expected
    # The last chunk has 10 valid instances: the padding is never trained on.
    assert trained[0] == selector.train_size and 0 < trained[1] <= 10
    np.testing.assert_array_equal(metrics["trained"], trained)
    assert int(got.main.step) == BLOCK
    chex.assert_trees_all_close(got.main.params, expected_state.main.params, atol=2e-5)
    chex.assert_trees_all_close(got.selector, expected_state.selector, atol=2e-5)


def test_the_block_compiles_once_per_length(tiny_dataset):
    selector = select.everything(chunk_size=M)
    block_step = engine.make_block_step(selector, tiny_dataset.info)
    state = _fresh(selector, tiny_dataset.info)
    root = jax.random.key(0)
    for first in (0, BLOCK):
        state, _ = block_step(state, *_block(tiny_dataset, first), root)
    images, labels, valid, chunks = _block(tiny_dataset, 2 * BLOCK)
    state, _ = block_step(state, images[:1], labels[:1], valid[:1], chunks[:1], root)
    assert block_step._cache_size() == 2


@pytest.mark.parametrize("length", [1, BLOCK])
def test_an_unrolled_block_has_no_loop_at_any_length(tiny_dataset, length):
    # A scan of length 1 with unroll=1 (or True) lowers to a one-trip while loop, whose
    # body XLA:CPU runs several times slower than straight-line code.
    selector = select.everything(chunk_size=M)
    block_step = engine.make_block_step(selector, tiny_dataset.info, unroll=True)
    state = _fresh(selector, tiny_dataset.info)
    block = [a[:length] for a in _block(tiny_dataset, 0)]
    text = block_step.lower(state, *block, jax.random.key(0)).as_text()
    assert "stablehlo.while" not in text
    rolled = engine.make_block_step(selector, tiny_dataset.info, unroll=False)
    assert "stablehlo.while" in rolled.lower(state, *block, jax.random.key(0)).as_text()


def _config(**overrides):
    base = dict(
        model="lenet_slim",
        dataset="fashion_mnist",
        method="eif",
        steps=20,  # Two epochs of the 320 instances of `tiny_dataset`.
        batch_size=32,
        r_set=0.25,
        block_chunks=2,
        checkpoint_every_steps=7,
        log_every_steps=5,
        eval_batch_size=64,
    )
    base.update(overrides)
    return config_lib.from_flags(base)


@pytest.mark.parametrize(
    ("overrides", "runner"),
    [
        ({"method": "sgd"}, runners.EngineRunner),
        ({"method": "emp"}, runners.EngineRunner),
        ({"method": "eif_emp"}, runners.EngineRunner),
        ({"eif_control": "argmax"}, runners.HostQueueRunner),
        ({"eif_batch_size": 32}, runners.HostQueueRunner),
        ({"eif_history": True}, runners.EngineRunner),
    ],
)
def test_each_method_gets_its_runner(tiny_dataset, overrides, runner):
    config = config_lib.resolve(_config(**overrides))
    built, state = runners.build_runner(config, tiny_dataset, 640)
    assert isinstance(built, runner) and int(state.step) == 0


def test_a_run_trains_r_set_of_each_chunk_in_blocks_of_two_lengths(tmp_path, tiny_dataset):
    config = _config()
    full = loop.train_and_evaluate(
        config, str(tmp_path / "full"), dataset=tiny_dataset, show_progress=False
    )
    # Blocks [1-2] [3-4] [5-6] [7] (checkpoint) [8-9] [10] (epoch end) [11-12] [13-14]
    # (checkpoint) ... [19-20]: lengths 2 and 1 only, each compiled once.
    assert full["compilations"] == {"block": 2}
    assert full["instances_trained"] == 20 * round(0.25 * 32) and full["steps"] == 20
    assert full["eif"]["filter_steps"] == 20

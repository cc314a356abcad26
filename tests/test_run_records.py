"""What a run records for the paper's Fig. 13 and 14, beside training: EMP's kept channels
per conv layer (read from the step's gradients) and snapshots of the selection's
decision on whole chunks (taken from the loop state before the chunk)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgefilter.method import emp
from edgefilter.training import config as config_lib
from edgefilter.training import loop, runners, snapshots
from edgefilter.training import stream as stream_lib


def test_kept_channels_counts_the_channels_with_a_weight_gradient():
    # One conv, 4 output channels, under the threshold policy S_j >= mean(S) (Eq. 14).
    # The output error is c: channel j's L1 norms sum to 0, 1, 2, 3 times the same
    # positive amount, so S = k * (0, 1, 2, 3), mean 1.5 k: channels 2 and 3 are kept.
    conv = emp.conv_general_dilated(emp.Threshold(1.0), xla_cpu=False)
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    c = jnp.ones((2, 3, 3, 4)) * jnp.asarray([0.0, 1.0, 2.0, 3.0])

    def loss(k):
        return jnp.sum(conv(x, k, (1, 1), "VALID", dimension_numbers=dn) * c)

    grad = jax.jit(jax.grad(loss))(kernel)
    grads = {
        "Conv_0": {"kernel": grad, "bias": jnp.ones(4)},
        "Dense_0": {"kernel": jnp.ones((8, 2))},
    }
    counts = emp.kept_channels(grads)
    assert list(counts) == ["Conv_0"]  # Dense kernels (2-D) are not conv layers.
    assert int(counts["Conv_0"]) == 2


def test_snapshot_targets_are_evenly_spaced_first_to_last():
    assert snapshots.targets(10, 4) == (0, 3, 6, 9)
    assert snapshots.targets(7, 4) == (0, 2, 4, 6)
    assert snapshots.targets(3, 4) == (0, 1, 2)  # Fewer chunks than snapshots.
    assert snapshots.targets(10, 1) == (9,)
    assert snapshots.targets(10, 0) == ()
    assert snapshots.due((0, 3, 6, 9), 2, 3) and not snapshots.due((0, 3, 6, 9), 4, 5)


def _config(**values) -> config_lib.TrainConfig:
    base = dict(
        model="lenet_slim",
        dataset="fashion_mnist",
        steps=7,
        batch_size=16,
        block_chunks=2,
        log_every_steps=2,
        checkpoint_every_steps=100,
        eval_batch_size=100,
    )
    return config_lib.resolve(config_lib.from_flags({**base, **values}))


def test_an_oracle_run_with_emp_records_kept_channels_and_its_decisions(tmp_path, tiny_dataset):
    # Oracle keeps the round(0.3 * 16) = 5 instances of each chunk with the largest loss
    # by the main network's inference forward before the chunk's step: the snapshot's
    # own losses. EMP's top-k keeps ceil(0.5 * 16) = 8 of Conv_1's 16 channels; the
    # first conv (6 channels) is dense.
    workdir = str(tmp_path / "run")
    config = _config(method="oracle", select_emp=True, emp_keep=0.5)
    summary = loop.train_and_evaluate(config, workdir, dataset=tiny_dataset, show_progress=False)
    assert summary["emp"] == {
        "policy": "topk",
        "layers": [
            {"name": "Conv_0", "channels": 6, "pruned": False, "kept": 6},
            {"name": "Conv_1", "channels": 16, "pruned": True, "kept": 8},
        ],
    }
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    counted = [r for r in records if any(k.startswith("emp/") for k in r)]
    assert counted == [
        {"step": s, "emp/kept_channels/Conv_0": 6, "emp/kept_channels/Conv_1": 8}
        for s in (2, 4, 6)  # Every log_every_steps-th chunk.
    ]
    assert not any(k.startswith("kept_channels/") for r in records for k in r)
    # 7 chunks, snapshots at chunks 0, 2, 4 and 6, each a block's first chunk.
    taken = snapshots.load(workdir)
    assert [s.chunk for s in taken] == [0, 2, 4, 6] and [s.step for s in taken] == [1, 3, 5, 7]
    stream = stream_lib.Stream(config.seed, len(tiny_dataset.train_labels), 7 * 16)
    for snap in taken:
        indices = stream.indices(16 * snap.chunk, 16)
        np.testing.assert_array_equal(snap.images, tiny_dataset.train_images[indices])
        np.testing.assert_array_equal(snap.labels, tiny_dataset.train_labels[indices])
        assert snap.epoch == pytest.approx(16 * snap.chunk / 320) and snap.valid.all()
        top = np.zeros(16, bool)
        top[np.argsort(-snap.losses, kind="stable")[:5]] = True
        np.testing.assert_array_equal(snap.kept, top)


def test_the_host_queue_runners_snapshot_is_what_the_filter_queues(tiny_dataset):
    # The paper's argmax rule runs on the host-queue runner: a chunk's predicted-H
    # instances join the train queue, which trains in batches of round(0.3 * 16) = 5.
    config = _config(method="eif", eif_control="argmax")
    runner, state = runners.build_runner(config, tiny_dataset, 7 * 16)
    before = loop.initial_loop(state, runner)
    indices = stream_lib.Stream(config.seed, 320, 7 * 16).indices(0, 16)
    chunk = (indices, np.ones(16, np.float32), 0)
    kept, losses = runner.decide(before, chunk)
    after, _ = runner.run_block(before, [chunk])
    trained, queued = int(after["trained"]), after["train_queue"]
    assert trained + len(queued) == kept.sum() and trained % 5 == 0
    np.testing.assert_array_equal(queued.items[: len(queued)], indices[kept][trained:])
    assert losses.shape == (16,) and np.all(losses > 0)

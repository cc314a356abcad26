"""Tests of edgefilter.checkpoint: round trips of loop-state pytrees through orbax."""

import errno
import json
import logging
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from edgefilter import models
from edgefilter.training import checkpoint as checkpoint_lib
from edgefilter.training import config as config_lib
from edgefilter.training import loop
from edgefilter.training import steps as train_lib
from edgefilter.training import stream as stream_lib


def _tree(seed):
    state = train_lib.create_train_state(
        models.create("lenet_slim", 10),
        optax.sgd(0.1, momentum=0.9),
        jax.random.key(seed),
        (28, 28, 1),
    )
    queue, _ = stream_lib.Queue.empty(4).push(np.array([7, 3]))
    return {
        "state": state.replace(step=jnp.asarray(seed + 5, jnp.int32)),
        "position": np.asarray(160 + seed, np.int64),
        "wall_time": np.asarray(1.5 * seed, np.float64),
        "queue": queue,
    }


def _template():
    return _tree(100)


def _assert_restored(restored, expected):
    chex.assert_trees_all_equal(restored["state"].params, expected["state"].params)
    chex.assert_trees_all_equal(restored["state"].opt_state, expected["state"].opt_state)
    assert int(restored["state"].step) == int(expected["state"].step)
    for key in ("position", "wall_time"):
        assert restored[key] == expected[key] and restored[key].dtype == expected[key].dtype
    np.testing.assert_array_equal(restored["queue"].items, expected["queue"].items)
    assert len(restored["queue"]) == 2
    # Host-side values come back as NumPy (the loop mutates queues with NumPy).
    assert isinstance(restored["queue"].items, np.ndarray)


def test_round_trip_keeps_values_dtypes_and_structure(tmp_path):
    saved = _tree(1)
    checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
    assert checkpointer.latest_step() is None
    checkpointer.save(3, saved)
    assert checkpointer.latest_step() == 3
    restored = checkpointer.restore(_template())
    _assert_restored(restored, saved)
    paths = lambda tree: [path for path, _ in jax.tree.leaves_with_path(tree)]  # noqa: E731
    assert paths(restored) == paths(saved)
    # A restored train state still trains: its apply_fn and optimizer are the template's.
    assert restored["state"].apply_fn is not None and restored["state"].tx is not None
    checkpointer.close()


def test_latest_step_is_the_newest_and_old_ones_are_pruned(tmp_path):
    checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=2)
    for step in (5, 10, 15):
        checkpointer.save(step, _tree(step))
    checkpointer.save(15, _tree(99))  # A step saved twice keeps the first save.
    assert checkpointer.latest_step() == 15
    _assert_restored(checkpointer.restore(_template()), _tree(15))
    checkpointer.close()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "15"]
    reopened = checkpoint_lib.Checkpointer(str(tmp_path))
    assert reopened.latest_step() == 15
    reopened.close()


def test_a_leftover_temporary_directory_does_not_break_restore(tmp_path):
    checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
    checkpointer.save(4, _tree(4))
    checkpointer.close()
    # What a run killed while writing step 8 leaves behind: orbax's temporary directory.
    leftover = tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp"
    (leftover / "default").mkdir(parents=True)
    (leftover / "default" / "partial").write_bytes(b"\0" * 16)
    reopened = checkpoint_lib.Checkpointer(str(tmp_path))
    assert reopened.latest_step() == 4
    _assert_restored(reopened.restore(_template()), _tree(4))
    assert not leftover.exists()  # Removed when the manager is opened again.
    reopened.save(8, _tree(8))  # The step can be written afresh.
    assert reopened.latest_step() == 8
    _assert_restored(reopened.restore(_template()), _tree(8))
    reopened.close()


def _truncate_data_files(step_dir):
    for folder, _, files in os.walk(step_dir):
        if os.path.basename(folder) == "d":  # OCDBT's data files.
            for name in files:
                path = os.path.join(folder, name)
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)


def _remove_array_metadata(step_dir):
    os.remove(step_dir / "default" / "manifest.ocdbt")


def _empty_the_folder(step_dir):
    shutil.rmtree(step_dir)
    step_dir.mkdir()


@pytest.mark.parametrize(
    "damage", [_remove_array_metadata, _truncate_data_files, _empty_the_folder]
)
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog, damage):
    checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
    for step in (4, 8):
        checkpointer.save(step, _tree(step))
    checkpointer.close()
    damage(tmp_path / "checkpoints" / "8")
    reopened = checkpoint_lib.Checkpointer(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        restored = reopened.restore(_template())
    _assert_restored(restored, _tree(4))
    (warning,) = [r.getMessage() for r in caplog.records]  # One line, orbax's own dropped.
    assert warning.startswith("skipped damaged checkpoint")
    assert str(tmp_path / "checkpoints" / "8") in warning and "\n" not in warning
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]  # The good one is kept.
    reopened.save(8, _tree(8))  # The damaged step is written afresh, not skipped.
    _assert_restored(reopened.restore(_template()), _tree(8))
    reopened.close()


def test_a_checkpoint_holding_a_nan_is_skipped_and_none_left_is_an_error(tmp_path, caplog):
    checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
    assert checkpointer.restore(_template()) is None  # No checkpoint: a fresh start.
    bad = _tree(3)
    bad["wall_time"] = np.asarray(np.nan, np.float64)
    checkpointer.save(3, bad)
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(checkpoint_lib.NoGoodCheckpoint, match="no checkpoint in"),
    ):
        checkpointer.restore(_template())
    assert any("wall_time holds a NaN" in r.getMessage() for r in caplog.records)
    assert os.listdir(tmp_path / "checkpoints") == ["3"]  # Kept: nothing to fall back to.
    checkpointer.close()


def test_a_save_without_room_on_the_disk_is_an_enospc_naming_the_folder(tmp_path, monkeypatch):
    checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
    checkpointer.save(4, _tree(4))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1 << 20))
    with pytest.raises(OSError) as info:  # Orbax would have spilled tracebacks, then failed.
        checkpointer.save(8, _tree(8))
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / "checkpoints")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]  # Nothing half-written.
    checkpointer.close()


def test_a_run_resumes_past_its_damaged_newest_checkpoint_to_the_same_parameters(
    tmp_path, tiny_dataset
):
    """Through the training loop: the damaged newest checkpoint (4) is skipped, the run
    resumes from 2, replays steps 3-4 and ends with the parameters it had before."""
    config = config_lib.TrainConfig(
        model="lenet_slim",
        dataset="fashion_mnist",
        steps=4,
        batch_size=32,
        checkpoint_every_steps=2,
        eval_batch_size=100,
    )
    workdir = tmp_path / "run"
    first = loop.train_and_evaluate(config, str(workdir), dataset=tiny_dataset, show_progress=False)
    _truncate_data_files(workdir / "checkpoints" / "4")
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # A line cut short.
    again = loop.train_and_evaluate(config, str(workdir), dataset=tiny_dataset, show_progress=False)
    chex.assert_trees_all_equal(again["state"].params, first["state"].params)
    with open(workdir / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f if '"loss"' in line]
    assert steps == [1, 2, 3, 4]  # Replayed once, the cut line gone.

"""Tests of edgefilter.metrics: the JSON-lines log, its TensorBoard events, resume."""

import json
import struct

import jax.numpy as jnp
import numpy as np
from tensorboardX.proto import event_pb2

from edgefilter.training import metrics as metrics_lib


def _lines(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_records_are_written_on_flush_in_order(tmp_path):
    log = metrics_lib.MetricsLog(str(tmp_path))
    assert log.records() == [] and log.flush() == {}
    log.add(1, {"loss": jnp.asarray(2.5), "accuracy": np.float32(0.25)})
    log.add(2, {"loss": jnp.asarray(1.5), "counts": jnp.asarray([1, 2])})
    assert log.records() == []  # Nothing is written before a flush.
    last = log.flush()
    assert last == {"loss": 1.5, "counts": [1, 2]}
    assert isinstance(last["loss"], float)
    expected = [
        {"step": 1, "loss": 2.5, "accuracy": 0.25},
        {"step": 2, "loss": 1.5, "counts": [1, 2]},
    ]
    assert log.records() == expected == _lines(tmp_path)
    assert log.flush() == {}  # The queue was emptied.
    log.add(3, {"test_accuracy": 0.5})
    assert log.flush() == {"test_accuracy": 0.5}
    assert [r["step"] for r in log.records()] == [1, 2, 3]


def test_without_a_workdir_the_records_are_kept_in_memory_and_nothing_is_written(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # Where a relative path would have gone.
    log = metrics_lib.MetricsLog(None)  # A multi-process run's processes but process 0.
    log.add(1, {"loss": jnp.asarray(2.5), "counts": jnp.asarray([1, 2])})
    assert log.records() == []
    assert log.flush() == {"loss": 2.5, "counts": [1, 2]}
    log.add(2, {"loss": float("nan")})
    log.close()
    assert log.records() == [{"step": 1, "loss": 2.5, "counts": [1, 2]}, {"step": 2, "loss": None}]
    assert list(tmp_path.iterdir()) == []


def test_resume_drops_the_records_after_the_checkpoint(tmp_path):
    log = metrics_lib.MetricsLog(str(tmp_path))
    for step in range(1, 11):
        log.add(step, {"loss": float(step)})
    log.flush()
    resumed = metrics_lib.MetricsLog(str(tmp_path), resume_step=6)
    assert [r["step"] for r in resumed.records()] == [1, 2, 3, 4, 5, 6]
    resumed.add(7, {"loss": 70.0})
    resumed.flush()
    assert [r["loss"] for r in _lines(tmp_path)] == [1, 2, 3, 4, 5, 6, 70]


def test_a_fresh_run_in_an_old_workdir_starts_an_empty_log(tmp_path):
    log = metrics_lib.MetricsLog(str(tmp_path))
    log.add(5, {"loss": 1.0})
    log.flush()
    assert metrics_lib.MetricsLog(str(tmp_path), resume_step=0).records() == []


def _events(workdir):
    """Every event of the workdir's event files, file by file in creation order, read
    as TFRecords by hand: length (8 bytes), its CRC (4), the Event proto, its CRC (4)."""
    events = []
    for path in sorted(workdir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + length])
            events.append(event)
            i += 12 + length + 4
    return events


def test_scalars_reach_tensorboard_and_a_resume_purges_the_replayed_steps(tmp_path):
    log = metrics_lib.MetricsLog(str(tmp_path))
    for step in range(1, 4):
        log.add(step, {"loss": float(step), "counts": jnp.asarray([1, 2])})
    log.add(3, {"test_accuracy": 0.75})
    log.close()
    resumed = metrics_lib.MetricsLog(str(tmp_path), resume_step=2)
    resumed.add(3, {"loss": 30.0})
    resumed.close()
    seen = []
    for event in _events(tmp_path):
        if event.HasField("session_log"):
            seen.append(("purge_from", event.step))
        for value in event.summary.value:
            seen.append((value.tag, event.step, value.simple_value))
    assert seen == [  # Vectors ("counts") are not scalars and stay in the JSON lines only.
        ("loss", 1, 1.0),
        ("loss", 2, 2.0),
        ("loss", 3, 3.0),
        ("test_accuracy", 3, 0.75),
        ("purge_from", 3),  # TensorBoard drops the first file's events from step 3 on.
        ("loss", 3, 30.0),
    ]


def test_a_half_written_last_line_is_dropped_on_resume(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    log = metrics_lib.MetricsLog(str(tmp_path), resume_step=2)
    assert log.records() == [{"step": 1, "loss": 2.0}] == _lines(tmp_path)
    log.add(2, {"loss": np.float32(np.nan)})  # Written as null: strict JSON.
    log.flush()
    assert (tmp_path / "metrics.jsonl").read_text().splitlines()[-1] == '{"step": 2, "loss": null}'
    log.close()
    assert [v for e in _events(tmp_path) for v in e.summary.value] == []  # Not an event either.

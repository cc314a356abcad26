"""Multi-process runs (edgefilter.training.multihost): two processes train as one.

The test starts three processes on this machine, each running ``experiments.train``'s
``main`` with the same flags: EIF+EMP (the filter's selection over the whole chunk, its
probes and update, EMP's channel scores, the main step) on the tiny learnable dataset,
4 chunks of 16 in blocks of 2, a checkpoint after each block. Two of them also get
``--coordinator_address``, ``--num_processes=2`` and their ``--process_id``, and join
over loopback (a port found free when the test starts; XLA:CPU's collectives between
them are gloo, JAX's default), one CPU device each. The third joins nothing and trains
on its one device: the engine without a mesh, as it ran before multi-process runs
existed, an independent computation of the same values. Each writes its final loop
state and a report; the tests assert on them.

Tolerance: as ``tests/test_parallel.py``, each float array of the loop state within
``1e-5`` of its largest magnitude. Over two devices the chunk-wide sums (gradients,
batch statistics, EMP's channel scores) are added as two partial sums and an
all-reduce, another order than one device's, which moves float32 values by ~1e-7
relative per step; after these 4 steps the largest difference seen was 5e-7. Integer
and boolean state (counters, the filter's labels and windows, the selection's counts)
and the instances trained must be equal. The one-process run goes through the same
``main`` and records its reads too: it must read every chunk whole, which checks the
recording itself. Different settings on the two processes and the methods that cannot
run on several processes must end in both with one line and exit status 2.

The dataset's training images are wrapped so that each process records which it
reads: each of the two must read its own half of every chunk and nothing else. To keep
the test near 20 s of CPU, all three compile as the whole suite does (``conftest``: LLVM
-O0, no fusion emitters: the same arithmetic, compiled several times faster) and one method
runs (SGD's path is EIF's with every instance selected).
"""

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from edgefilter.training import loop
from edgefilter.training import stream as stream_lib
from tests.conftest import filled_once

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESSES, M, CHUNKS, TRAIN = 2, 16, 4, 320
TOLERANCE = 1e-5
TIMEOUT_S = 300  # For all three; ~15 s on an idle 2-core machine.
ONE = "one"  # The one-process run's name, beside the processes' numbers.
SETTINGS = dict(
    dataset="idx:tiny",
    model="lenet_slim",
    method="eif_emp",
    steps=CHUNKS,
    batch_size=M,
    block_chunks=2,
    checkpoint_every_steps=2,
    eval_batch_size=100,
    xla_cpu=False,
    snapshots=0,
    progress=False,
)
REFUSED = (  # Settings a multi-process run refuses, each with the line it ends with.
    (
        {"seed": "PROCESS"},  # Each process its own seed: a different run in each.
        "error: the 2 processes were given different settings (--seed); start each with "
        "the same flags but --process_id",
    ),
    (
        {"eif_control": "argmax"},
        "error: --num_processes=2 is invalid: --eif_control=argmax and a non-default "
        "--eif_batch_size run in one process only (their host-side queue); use one process",
    ),
    (
        {"batch_size": 15},
        "error: --batch_size=15 is invalid: a chunk of 15 does not split over "
        "--num_processes=2 x --data_parallel=1 devices; use a multiple of the device count",
    ),
)


class _Recorded:
    """An array-like (as ``data.Dataset`` allows) that records the indices it is read at."""

    def __init__(self, array: np.ndarray, reads: list):
        self.array, self.reads = array, reads
        self.shape, self.dtype = array.shape, array.dtype

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index):
        self.reads.append(np.asarray(index).reshape(-1).tolist())
        return self.array[index]


def _flags(settings: dict) -> list[str]:
    """``settings`` as ``experiments.train``'s flags."""
    shown = {k: str(v).lower() if isinstance(v, bool) else v for k, v in settings.items()}
    return [f"--{k}={v}" for k, v in shown.items()]


def _main(argv: list[str]) -> tuple[int | None, str]:
    """``experiments.train``'s main on ``argv``: its exit status (None: returned) and
    what it wrote to stderr."""
    from absl import flags

    from experiments import cli, train

    flags.FLAGS.unparse_flags()
    err, status = io.StringIO(), None
    with contextlib.redirect_stderr(err):
        try:
            train.main(cli.parse_flags(["experiments.train", *argv]))
        except SystemExit as e:
            status = e.code
    return status, err.getvalue()


def _worker(out: str, name: str, port: int) -> None:
    """One of the three processes (``name``: ``ONE`` or a process id): the run on the
    tiny dataset, then (the two joined processes) each refused setting. Writes
    ``<out>/state_<name>.npz`` (the final loop state) and ``<out>/report_<name>.json``."""
    from edgefilter import data as data_lib
    from tests.conftest import learnable_images

    reads: list = []
    train_images, train_labels = learnable_images(TRAIN, 0)
    info = data_lib.DatasetInfo("tiny", 10, (28, 28, 1), (0.15,), (0.3,))
    recorded = _Recorded(train_images, reads)
    dataset = data_lib.Dataset(info, recorded, train_labels, *learnable_images(100, 1))
    data_lib.load = lambda *args, **kwargs: dataset  # This process only.
    summaries, run = [], loop.train_and_evaluate
    loop.train_and_evaluate = lambda *a, **k: summaries.append(run(*a, **k)) or summaries[-1]
    joined, workdir = [], f"{out}/run_{ONE}"
    if name != ONE:
        workdir = f"{out}/run"  # The two processes' one workdir.
        joined = [
            f"--coordinator_address=127.0.0.1:{port}",
            f"--num_processes={PROCESSES}",
            f"--process_id={name}",
        ]
    status, err = _main([*_flags(SETTINGS), *joined, f"--workdir={workdir}"])
    if status is not None:
        raise SystemExit(f"experiments.train ended with status {status}: {err}")
    state = {"state": summaries[0]["state"], "filter": summaries[0]["filter"]}
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state))
    np.savez(f"{out}/state_{name}.npz", **{jax.tree_util.keystr(p): v for p, v in leaves})
    report = {"reads": reads, "trained": summaries[0]["instances_trained"], "refused": []}
    for changed, _ in REFUSED if joined else ():
        workdir = f"{out}/refused_{name}"
        changed = {k: name if v == "PROCESS" else v for k, v in changed.items()}
        status, err = _main([*_flags({**SETTINGS, **changed}), *joined, f"--workdir={workdir}"])
        report["refused"].append([status, err, os.path.exists(workdir)])
    with open(f"{out}/report_{name}.json", "w") as f:
        json.dump(report, f)


def _free_port() -> int:
    """A loopback port nothing listens on now (the coordinator binds it moments later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out: str) -> dict[str, subprocess.Popen]:
    """The three processes, compiling as the suite does (their environment is this
    process's); their output goes to ``<out>/<name>.out`` and ``.err``."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    port, started = _free_port(), {}
    for name in (ONE, *map(str, range(PROCESSES))):
        code = f"from tests.test_multihost import _worker; _worker({out!r}, {name!r}, {port})"
        with open(f"{out}/{name}.out", "w") as stdout, open(f"{out}/{name}.err", "w") as stderr:
            started[name] = subprocess.Popen(
                [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=stdout, stderr=stderr
            )
    return started


def _wait(started: dict[str, subprocess.Popen], out: str) -> None:
    """Waits for the processes (killing all past ``TIMEOUT_S``); fails with the tails of
    their stderr unless each ended with status 0."""
    deadline = time.monotonic() + TIMEOUT_S
    for process in started.values():
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in started.values():
                other.kill()
                other.wait()
    failed = {name: p.returncode for name, p in started.items() if p.returncode != 0}
    if failed:
        tails = []
        for name, status in failed.items():
            with open(f"{out}/{name}.err") as f:
                tails.append(f"--- process {name}, status {status}:\n{f.read()[-3000:]}")
        pytest.fail("a process failed (status -9: killed at the timeout)\n" + "\n".join(tails))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each process's report (with its stdout) and final loop state, by name."""
    out = filled_once(tmp_path_factory, "multihost", lambda out: _wait(_start(out), out))
    reports, states = {}, {}
    for name in (ONE, *map(str, range(PROCESSES))):
        with open(f"{out}/report_{name}.json") as f:
            reports[name] = json.load(f)
        with open(f"{out}/{name}.out") as f:
            reports[name]["stdout"] = f.read()
        states[name] = dict(np.load(f"{out}/state_{name}.npz"))
    return {"out": out, "reports": reports, "states": states}


@pytest.mark.parametrize("process", ["0", "1"])
def test_two_processes_end_with_the_parameters_of_one(runs, process):
    reference, state = runs["states"][ONE], runs["states"][process]
    assert sorted(state) == sorted(reference)
    worst, unequal = 0.0, []
    for name, a in reference.items():
        b = state[name]
        if a.dtype.kind == "f":
            scale = max(float(np.max(np.abs(a), initial=0.0)), 1e-30)
            worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)) / scale)
        elif not np.array_equal(a, b):
            unequal.append(name)
    assert unequal == [] and worst <= TOLERANCE, (unequal, worst)
    reports = runs["reports"]
    assert reports[process]["trained"] == reports[ONE]["trained"] > 0


@pytest.mark.parametrize("process", [ONE, *map(str, range(PROCESSES))])
def test_each_process_reads_its_own_part_of_every_chunk(runs, process):
    stream = stream_lib.Stream(0, TRAIN, CHUNKS * M)
    rows = slice(0, M)  # One process: the whole chunk.
    if process != ONE:
        half = M // PROCESSES
        rows = slice(int(process) * half, (int(process) + 1) * half)
    expected = np.concatenate([stream.indices(c * M, M)[rows] for c in range(CHUNKS)])
    read = np.concatenate([np.asarray(r) for r in runs["reports"][process]["reads"]])
    np.testing.assert_array_equal(read, expected)


def test_process_zero_alone_writes_the_workdir_and_records_the_processes(runs):
    out = runs["out"]
    workdir = os.path.join(out, "run")
    with open(os.path.join(workdir, "summary.json")) as f:
        recorded = json.load(f)["config"]
    assert recorded["num_processes"] == PROCESSES and recorded["process_id"] == 0
    assert recorded["coordinator_address"].startswith("127.0.0.1:")
    with open(os.path.join(out, f"run_{ONE}", "summary.json")) as f:
        one = json.load(f)["config"]
    assert (one["num_processes"], one["process_id"], one["coordinator_address"]) == (1, 0, None)
    names = os.listdir(workdir)
    assert len([n for n in names if n.startswith("events.out")]) == 1, names
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    stdout = [runs["reports"][str(p)]["stdout"] for p in range(PROCESSES)]
    assert "test accuracy" in stdout[0] and "test accuracy" not in stdout[1], stdout


@pytest.mark.parametrize("case", range(len(REFUSED)))
def test_what_cannot_run_on_several_processes_is_refused_with_one_line(runs, case):
    for process in range(PROCESSES):
        status, stderr, workdir_made = runs["reports"][str(process)]["refused"][case]
        assert (status, stderr, workdir_made) == (2, REFUSED[case][1] + "\n", False)

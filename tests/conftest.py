"""Shared fixtures and helpers: a tiny learnable dataset, in memory and as a folder of IDX
files; model variables drawn with NumPy; one persistent XLA compilation cache per test
session; quick compiles everywhere (XLA's optimizations and fusion emitters off), XLA's
defaults where a test of compiled code asks for them; commands run as ``python -m``
would, forked from one server that imported JAX once."""

import contextlib
import fcntl
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

import jax
import numpy as np
import pytest
from absl import flags, logging

from edgefilter import data as data_lib
from edgefilter.backends.xla_cpu import compile as compile_lib

# The session's compilation cache: a fresh folder per run (a run never reads an earlier
# run's executables), shared by the xdist workers and the commands the tests start.
_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_CACHE_SETTINGS = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
}
_CACHE_OWNER = "_edgefilter_test_cache_owner"


def pytest_configure(config: pytest.Config) -> None:
    """Points JAX's persistent compilation cache at one temporary folder per session.

    Most of the suite's time is XLA compilation, and many tests compile the same
    computation (the same step of the same small model on the same shapes) through
    different ``jax.jit`` objects, in different xdist workers, or in a ``python -m``
    command and again in the test's own process. The cache key is the computation with
    its debug information stripped, the compile options and the backend, so a hit runs
    the executable XLA compiled for exactly that computation: values, compiled code and
    its cost analysis are those of a fresh compilation. The controller (or a run without
    xdist) makes the folder and removes it at the end; workers and subprocesses inherit
    it through the environment (jax reads ``JAX_COMPILATION_CACHE_DIR`` at import).
    """
    if not hasattr(config, "workerinput"):  # The controller, or a run without xdist.
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="edgefilter-tests-xla-")
        os.environ.update(_CACHE_SETTINGS)
        setattr(config, _CACHE_OWNER, os.environ[_CACHE_ENV])
    _quick_compiles()
    if _CACHE_ENV not in os.environ:  # A worker whose controller did not load this file.
        return
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


# The suite compiles quickly: XLA's optimizations mostly off (LLVM at -O0, its expensive
# passes skipped) and XLA:CPU's MLIR fusion emitters off (its older elemental emitter,
# as edgefilter's filter inference compiles); a test of compiled code or of edgefilter's
# own compile options asks for XLA's defaults (``shipped_optimization``).
_QUICK_ENV = "JAX_DISABLE_MOST_OPTIMIZATIONS"
_QUICK_FLAG = "jax_disable_most_optimizations"
_XLA_FLAGS = "XLA_FLAGS"
_NO_FUSION_EMITTERS = f"--{compile_lib.FUSION_EMITTERS_OPTION}=false"


def _quick_compiles() -> None:
    """Compiles quickly in this process and every process it starts (workers, commands,
    notebook kernels, the subprocess tests), through the environment they inherit.

    On a fresh clone most of the suite's time is XLA compilation; at -O0 and with the
    older emitter the same computations compile several times faster and run the same
    arithmetic (neither enables fast-math), while the tests' small runs execute slightly
    slower. A ``JAX_DISABLE_MOST_OPTIMIZATIONS`` already in the environment (``0`` for
    XLA's defaults) is left as it is, and so is an ``XLA_FLAGS`` that names the fusion
    emitters. XLA reads ``XLA_FLAGS`` when a process first uses a backend, which pytest
    has not done when it configures (nor has a worker).
    """
    os.environ.setdefault(_QUICK_ENV, "1")
    # Read as JAX reads it at import (jax._src.config.bool_env), as the workers will.
    quick = os.environ[_QUICK_ENV].lower() in ("y", "yes", "t", "true", "on", "1")
    jax.config.update(_QUICK_FLAG, quick)
    flags = os.environ.get(_XLA_FLAGS, "")
    if quick and compile_lib.FUSION_EMITTERS_OPTION not in flags:
        os.environ[_XLA_FLAGS] = f"{flags} {_NO_FUSION_EMITTERS}".strip()


@contextlib.contextmanager
def shipped_optimization() -> Iterator[dict[str, bool]]:
    """XLA's default optimizations for what compiles inside: a test of compiled code (its
    text, its cost analysis) or of edgefilter's own compile options checks what a user's
    run compiles. Yields the compile options that undo the suite's ``XLA_FLAGS``, for
    ``Lowered.compile(options)``: they override a jit's own option of the same name, so
    not for a function jitted with ``fusion_emitters=False``."""
    quick = jax.config.read(_QUICK_FLAG)
    jax.config.update(_QUICK_FLAG, False)
    undo = _NO_FUSION_EMITTERS in os.environ.get(_XLA_FLAGS, "").split()
    try:
        yield {compile_lib.FUSION_EMITTERS_OPTION: True} if undo else {}
    finally:
        jax.config.update(_QUICK_FLAG, quick)


def compile_as_shipped(jitted, *args) -> jax.stages.Compiled:
    """``jitted`` lowered for ``args`` and compiled as a user's run compiles it
    (:func:`shipped_optimization`): for a test of its text or its cost analysis."""
    with shipped_optimization() as options:
        return jitted.lower(*args).compile(options)


def xla_flops(compiled: jax.stages.Compiled) -> float:
    """XLA's flop count of ``compiled`` (its cost analysis: a dict, or a list of them)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost["flops"])


@pytest.fixture(name="shipped_optimization")
def shipped_optimization_fixture() -> Iterator[dict[str, bool]]:
    """:func:`shipped_optimization` for a whole test; its value is the compile options."""
    with shipped_optimization() as options:
        yield options


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = getattr(config, _CACHE_OWNER, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def filled_once(tmp_path_factory: pytest.TempPathFactory, name: str, fill: Callable) -> str:
    """The folder ``name``, filled by ``fill(folder)`` once per test session.

    Under xdist every worker that runs a test of a module runs its module-scoped fixtures
    again (``--dist worksteal`` may split a module between the two workers). For a fixture
    that runs a costly subprocess (test_multihost, test_parallel), the first worker to get
    here fills a folder of the session's base temporary directory, which all workers
    share, under a file lock; the others wait for it and read the same folder. If
    ``fill`` fails, the next worker tries again (and fails with its own error).
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, filled = shared / name, shared / f"{name}.filled"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not filled.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            fill(str(folder))
            filled.touch()
    return str(folder)


def learnable_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images whose class is written as a bright row band (easy to learn)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.integers(0, 60, (n, 28, 28, 1), dtype=np.uint8)
    for c in range(10):
        images[labels == c, 2 + 2 * c : 4 + 2 * c, :, 0] = 250
    return images, labels


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes ``array`` (uint8) as a gzipped MNIST-format IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def tiny_dataset() -> data_lib.Dataset:
    train_images, train_labels = learnable_images(320, 0)
    test_images, test_labels = learnable_images(100, 1)
    info = data_lib.DatasetInfo("tiny", 10, (28, 28, 1), (0.15,), (0.3,))
    return data_lib.Dataset(info, train_images, train_labels, test_images, test_labels)


@pytest.fixture(scope="session")
def idx_folder(tmp_path_factory, tiny_dataset) -> str:
    folder = str(tmp_path_factory.mktemp("idx"))
    for split, images, labels in (
        ("train", tiny_dataset.train_images, tiny_dataset.train_labels),
        ("t10k", tiny_dataset.test_images, tiny_dataset.test_labels),
    ):
        write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), images[..., 0])
        write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"), labels)
    return folder


def numpy_variables(model, *args, seed: int = 0, dtype=None, **kwargs) -> dict:
    """Variables of ``model.init(key, *args, **kwargs)``'s structure, drawn with NumPy.

    The structure (and, unless ``dtype`` is given, the dtypes) comes from
    ``jax.eval_shape``, which compiles nothing; the values from NumPy: kernels
    N(0, 1 / fan_in), batch-norm scales and running variances 1 + |N(0, 0.1^2)|, biases
    and running means N(0, 0.1^2). ``model.init`` compiles threefry for every parameter
    shape, a second or more each on XLA:CPU.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))

    def draw(path, leaf):
        noise = rng.standard_normal(leaf.shape)
        name = path[-1].key
        if name == "kernel":
            value = noise / np.sqrt(np.prod(leaf.shape[:-1]))
        elif name in ("scale", "var"):
            value = 1.0 + 0.1 * np.abs(noise)
        else:
            value = 0.1 * noise
        return np.asarray(value, leaf.dtype if dtype is None else dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture
def fresh_flags():
    """Parses from the flags' defaults and leaves them so (absl's FLAGS are global)."""
    verbosity = logging.get_verbosity()
    flags.FLAGS.unparse_flags()
    yield
    flags.FLAGS.unparse_flags()
    logging.set_verbosity(verbosity)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Reads [module, argv] per line; forks; the child runs the module as __main__ with stderr
# into a pipe; answers [exit status, stderr] per line.
_SERVER = r"""
import json, os, runpy, sys, traceback
import absl.app, jax, edgefilter, edgefilter.training.loop, experiments.cli  # Once.
for line in sys.stdin:
    module, argv = json.loads(line)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.dup2(write, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # The answers' channel stays clean.
        sys.argv = [module, *argv]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as exit:  # What the interpreter does with it.
            code = exit.code
            status = code if isinstance(code, int) else (0 if code is None else 1)
            if not isinstance(code, (int, type(None))):
                print(code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            status = 1
        sys.stderr.flush()
        os._exit(status)
    os.close(write)
    with os.fdopen(read) as f:
        err = f.read()
    _, wait_status = os.waitpid(pid, 0)
    print(json.dumps([os.waitstatus_to_exitcode(wait_status), err]), flush=True)
"""


@contextlib.contextmanager
def command_server() -> Iterator:
    """Yields ``run(module, *argv) -> (exit status, stderr)``, as ``python -m`` would run it.

    Each command runs as ``python -m <module> <argv>`` does (``runpy.run_module`` as
    ``__main__``, its own argv, stderr and exit status) in a process of its own, forked
    from one server process (started in the repository root, with this process's
    environment, the quick compiles included) that has imported JAX, absl and edgefilter
    once: a fresh interpreter per command spends about 2 s of CPU on those imports alone.
    The server never initialises a JAX backend (no XLA threads exist when it forks), so
    each command compiles its own steps; the session's compilation cache is shared
    through the environment.
    """
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def run(module: str, *argv: str) -> tuple[int, str]:
        server.stdin.write(json.dumps([module, list(argv)]) + "\n")
        server.stdin.flush()
        return tuple(json.loads(server.stdout.readline()))

    try:
        yield run
    finally:
        server.stdin.close()
        server.wait(timeout=60)

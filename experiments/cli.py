"""Command-line plumbing shared by the experiments and the benchmarks: bad input exits 2.

absl exits with status 1 when a flag does not parse; edgefilter's commands exit with 2
(the usual status for a usage error), after one line naming the bad value.

The run's flags are not written here: :func:`define_config_flags` defines one absl flag
per entry of ``edgefilter.training.config.FLAGS`` (each a field of the nested
``TrainConfig``, with the field's default and help), and :func:`config_from_flags`
builds the config back from the parsed values (or from a config file's, with the flags
given over it). :func:`warn_foreign_flags` names the given flags the selected methods
do not use (one ``warning:`` line; they are ignored).
The benchmarks' own flags are checked as they are parsed (:func:`check_flag`, with
:func:`finite_in`, :func:`distinct_choices`, :func:`writable_file`,
:func:`writable_folder`), so a bad value exits 2 before minutes of work.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

# TensorFlow (tfds's reader) logs its start-up at INFO/WARNING from C++; a one-line error
# must not come after a screenful of it. Set before anything imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from edgefilter.training import (  # noqa: E402
    checkpoint,
    divergence,
    preflight,  # noqa: E402
)
from edgefilter.training import config as config_lib  # noqa: E402

_DEFINE = {
    str: flags.DEFINE_string,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_bool,
    tuple: flags.DEFINE_list,
}


def warn(message: str) -> None:
    """Prints ``warning: message`` to stderr (the run goes on)."""
    print(f"warning: {message}", file=sys.stderr)


def warn_foreign_flags(methods: Sequence[str]) -> None:
    """One warning naming the given flags that none of ``methods`` uses (they are ignored).

    Which flags belong to which methods is declared per field in ``config/schema.py``
    (``setting(..., methods=...)``, see ``config.foreign_flags``).
    """
    given = [f.name for f in config_lib.FLAGS if flags.FLAGS[f.name].present]
    foreign = config_lib.foreign_flags(methods, given)
    if foreign:
        names = ", ".join(f"--{name}" for name in foreign)
        warn(f"{names} ignored: not used by --method={','.join(dict.fromkeys(methods))}")


def fail(message: str) -> NoReturn:
    """Prints ``error: message`` to stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that exits with status 2 (not 1) on a malformed flag."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e))


def define_config_flags() -> None:
    """Defines the absl flag of every setting of ``TrainConfig`` (``config.FLAGS``)."""
    for flag in config_lib.FLAGS:
        default = list(flag.default) if isinstance(flag.default, tuple) else flag.default
        _DEFINE[flag.kind](flag.name, default, flag.help)


def config_from_flags(base: config_lib.TrainConfig | None = None) -> config_lib.TrainConfig:
    """The TrainConfig of the parsed flags; ValueError names a bad flag's value.

    Without ``base``, every flag's value (its default where not given); with ``base`` (a
    config file's, ``experiments.config_file``), ``base`` with the flags given on the
    command line over it. The run's length is one setting given either way: ``--epochs``
    alone replaces ``base``'s ``steps`` too, and ``--steps`` alone its ``epochs``.
    """
    if base is None:
        values = {f.name: flags.FLAGS[f.name].value for f in config_lib.FLAGS}
        return config_lib.from_flags(values)
    given = [f for f in config_lib.FLAGS if flags.FLAGS[f.name].present]
    values = {f.name: flags.FLAGS[f.name].value for f in given}
    for length, other in (("epochs", "steps"), ("steps", "epochs")):
        if length in values and other not in values:
            values[other] = None
    return config_lib.from_flags(values, base)


# --- Checks of the benchmarks' own flags, run when the flags are parsed (exit 2) -------------


def check_flag(name: str, ok: Callable[[Any], bool], allowed: str) -> None:
    """Registers ``ok`` as the validator of flag ``name`` (None, its unset value, passes).

    A value it refuses (or that makes it raise) fails parsing: one line naming the flag,
    the value and ``allowed``, exit status 2 (:func:`parse_flags`).
    """

    def validator(value: Any) -> bool:
        try:
            return value is None or bool(ok(value))
        except (TypeError, ValueError):
            return False

    flags.register_validator(name, validator, message=f"allowed: {allowed}")


def finite_in(low: float, high: float, *, closed_high: bool = True) -> Callable[[Any], bool]:
    """A check that a number (or each number of a list flag) is finite in (low, high]."""

    def ok(value: Any) -> bool:
        values = value if isinstance(value, list) else [value]
        return bool(values) and all(
            math.isfinite(float(v))
            and low < float(v)
            and (float(v) <= high if closed_high else float(v) < high)
            for v in values
        )

    return ok


def distinct_choices(choices: Sequence[str]) -> Callable[[list[str]], bool]:
    """A check that a list flag is non-empty, each entry one of ``choices``, none repeated."""
    return lambda values: (
        bool(values) and len(set(values)) == len(values) and set(values) <= set(choices)
    )


def writable_file(path: str) -> bool:
    """Whether ``path`` can be written: its folder is, or can be made, a writable folder."""
    if os.path.isdir(path):
        return False
    preflight.check_workdir(os.path.dirname(os.path.abspath(path)))
    return True


def writable_folder(path: str) -> bool:
    """Whether ``path`` is, or can be made, a writable folder."""
    preflight.check_workdir(path)
    return True


@contextlib.contextmanager
def training_exits() -> Iterator[None]:
    """Ends a command whose training fails in a way the user must see, in one line:
    a run that diverged (exit status 3), a workdir none of whose checkpoints restores
    (2), a path that could not be written, e.g. a full disk (1)."""
    try:
        yield
    except divergence.Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except checkpoint.NoGoodCheckpoint as e:  # Every checkpoint of the workdir is damaged.
        fail(str(e))
    except OSError as e:
        where = e.filename or "the workdir"
        reason = "the disk is full" if e.errno == errno.ENOSPC else e.strerror or str(e)
        print(f"error: cannot write {where}: {reason}", file=sys.stderr)
        sys.exit(1)

"""Command-line plumbing shared by the experiments and the benchmarks: bad input exits 2.

absl exits with status 1 when a flag does not parse; edgefilter's commands exit with 2
(the usual status for a usage error), after one line naming the bad value.

The run's flags are not written here: :func:`define_config_flags` defines one absl flag
per entry of ``edgefilter.training.config.FLAGS`` (each a field of the nested
``TrainConfig``, with the field's default and help), and :func:`config_from_flags`
builds the config back from the parsed values.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

# TensorFlow (tfds's reader) logs its start-up at INFO/WARNING from C++; a one-line error
# must not come after a screenful of it. Set before anything imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

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

    Which flags belong to which methods is declared per field in ``config.py``
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


def config_from_flags() -> config_lib.TrainConfig:
    """The TrainConfig of the parsed flags; ValueError names a bad flag's value."""
    return config_lib.from_flags({f.name: flags.FLAGS[f.name].value for f in config_lib.FLAGS})

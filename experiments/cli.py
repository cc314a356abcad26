"""Command-line plumbing shared by the experiments and the benchmarks: bad input exits 2.

absl exits with status 1 when a flag does not parse; edgefilter's commands exit with 2
(the usual status for a usage error), after one line naming the bad value.

The run's flags are not written here: :func:`define_config_flags` defines one absl flag
per entry of ``edgefilter.training.config.FLAGS`` (each a field of the nested
``TrainConfig``, with the field's default and help), and :func:`config_from_flags`
builds the config back from the parsed values.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import flags

from edgefilter.training import config as config_lib

_DEFINE = {
    str: flags.DEFINE_string,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_bool,
    tuple: flags.DEFINE_list,
}


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

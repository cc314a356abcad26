"""Command-line plumbing shared by the experiments and the benchmarks: bad input exits 2.

absl exits with status 1 when a flag does not parse; edgefilter's commands exit with 2
(the usual status for a usage error), after one line naming the bad value.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import flags


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

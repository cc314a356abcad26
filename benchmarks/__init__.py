"""Performance runs, kept out of the test suite (see benchmarks/README.md)."""

from __future__ import annotations

import json
from typing import Any


def report_json(result: Any, output: str, *, show: bool = True) -> None:
    """Prints ``result`` as indented JSON (unless ``show`` is False; the caller printed
    its own table) and writes the same JSON to ``output`` when it is not empty."""
    if show:
        print(json.dumps(result, indent=2))
    if output:
        with open(output, "w") as f:
            json.dump(result, f, indent=2)

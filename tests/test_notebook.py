"""The Colab tour runs top to bottom (its training cell shortened to a few steps)."""

from __future__ import annotations

import contextlib
import io
import json
import pathlib

NOTEBOOK = pathlib.Path(__file__).parent.parent / "colab" / "edgefilter_tour.ipynb"


def _code_cells() -> list[str]:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def test_every_code_cell_runs(tmp_path: pathlib.Path) -> None:
    cells = _code_cells()
    training = [i for i, src in enumerate(cells) if "comparison.compare" in src]
    assert len(training) == 1
    short = cells[training[0]]
    for old, new in (
        ("epochs=1.0", "epochs=0.007"),  # 7 chunks of 64: no full block to compile.
        ('"/tmp/edgefilter_tour"', repr(str(tmp_path))),
    ):
        assert old in short, old
        short = short.replace(old, new)
    cells[training[0]] = short
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for src in cells:
            exec(compile(src, str(NOTEBOOK), "exec"), namespace)  # noqa: S102
    printed = out.getvalue()
    assert "channels with a weight gradient: 16 of 32" in printed
    assert "| sgd |" in printed and "| eif_emp |" in printed

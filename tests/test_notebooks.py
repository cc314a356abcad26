"""The Colab notebooks (``colab/*.ipynb``) run top to bottom in a real Jupyter kernel.

Each notebook is executed by nbclient, cell after cell, in an IPython kernel of this
interpreter started in the repository root (``ipykernel``, from a kernel spec written
for the test, so no installed spec is used and nothing is registered), with its code
unchanged: as papermill does, a cell inserted after the one tagged ``parameters`` gives
smaller values to names that cell assigns (the tiny IDX dataset of ``conftest``, a few
chunks, a temporary workdir). The first cell installs edgefilter only on Colab, so here
it does nothing. Every cell tagged ``figure`` must have drawn an image (``image/png``),
and no other cell; a few printed values are checked.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from tests.conftest import ROOT

COLAB = pathlib.Path(ROOT) / "colab"
KERNEL = "edgefilter-test"
CELL_TIMEOUT_S = 600  # A hung kernel fails the test instead of blocking the suite.


def _kernel_manager(tmp: pathlib.Path) -> AsyncKernelManager:
    """A manager for an IPython kernel of ``sys.executable``, its files under ``tmp``."""
    spec = tmp / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    return AsyncKernelManager(
        kernel_name=KERNEL,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]),
        connection_file=str(tmp / "connection.json"),
    )


def execute(name: str, tmp: pathlib.Path, **parameters):
    """``colab/<name>.ipynb`` executed with ``parameters`` set after its parameters cell."""
    notebook = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
    tagged = [i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: one cell tagged 'parameters', found {len(tagged)}"
    assigned = set(re.findall(r"^(\w+) = ", notebook.cells[tagged[0]].source, re.MULTILINE))
    assert set(parameters) <= assigned, f"{name} has no parameter {set(parameters) - assigned}"
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(tagged[0] + 1, injected)
    kernel_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]),
        "IPYTHONDIR": str(tmp / "ipython"),  # The kernel's history database: not in HOME.
    }
    client = NotebookClient(
        notebook,
        km=_kernel_manager(tmp / "kernel"),
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": ROOT}},  # The kernel's working directory.
    )
    client.execute(cleanup_kc=True, env=kernel_env)  # Shuts the kernel down at the end.
    return notebook


def _text(cell) -> str:
    """What a cell printed and displayed as text (streams, then text/markdown or plain)."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output:
            data = output.data
            parts.append(data.get("text/markdown", data.get("text/plain", "")) + "\n")
    return "".join(parts)


def printed(notebook) -> str:
    return "".join(_text(cell) for cell in notebook.cells if cell.cell_type == "code")


def images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def check_figures(notebook, at_least: int) -> None:
    """Every ``figure`` cell drew an image, no other cell did; ``at_least`` such cells."""
    code = [c for c in notebook.cells if c.cell_type == "code"]
    figure = ["figure" in c.metadata.get("tags", []) for c in code]
    assert sum(figure) >= at_least
    for cell, is_figure in zip(code, figure, strict=True):
        assert (images(cell) > 0) == is_figure, cell.source


def test_the_first_cell_of_each_notebook_installs_from_the_repo_url_on_colab_only():
    notebooks = sorted(COLAB.glob("*.ipynb"))
    assert [p.stem for p in notebooks] == ["own_loop", "quickstart", "reproduce"]
    for path in notebooks:
        cells = nbformat.read(path, as_version=4).cells
        first = cells[0]  # The notebook opens with it, before its title.
        assert first.cell_type == "code"
        assert re.search(r'^REPO_URL = "https://github\.com/', first.source, re.MULTILINE)
        assert 'if "google.colab" in sys.modules:\n    %pip install -q "git+{REPO_URL}"' in (
            first.source
        )


def test_quickstart_compares_eif_emp_with_sgd_and_plots(tmp_path, idx_folder):
    notebook = execute(
        "quickstart", tmp_path, EPOCHS=2.0, DATASET=f"idx:{idx_folder}", WORKDIR=str(tmp_path / "w")
    )
    check_figures(notebook, at_least=4)
    text = printed(notebook)
    assert "320 training and 100 test images" in text
    assert re.search(r"\| sgd \| [\d.]+ \| 1\.000 \|", text), text
    # 2 epochs of 5 chunks of 64: 19 of each chunk trained (round(0.3 * 64)).
    assert re.search(r"\| eif_emp \| [\d.]+ \| 0\.297 \|", text), text


def test_own_loop_trains_a_plain_flax_loop_with_eif_and_emp(tmp_path, idx_folder):
    notebook = execute("own_loop", tmp_path, CHUNKS=20, EVALUATIONS=2, DATASET=f"idx:{idx_folder}")
    check_figures(notebook, at_least=2)
    text = printed(notebook)
    assert "EIF+EMP trained 380 of 1280 instances (0.297)" in text  # 19 of each 64.
    assert "channels with a weight gradient: 16 of 32" in text


def test_reproduce_runs_a_shrunk_config_and_shows_the_report(tmp_path):
    workdir = tmp_path / "w"
    # One variant (its default is two): each is a training command of its own.
    notebook = execute("reproduce", tmp_path, VARIANTS=["eif_emp_79"], WORKDIR=str(workdir))
    check_figures(notebook, at_least=1)
    text = printed(notebook)
    assert re.search(r"^eif_emp_79: \{.*'method': 'eif_emp'.*'r_set': 0\.22", text, re.M)
    assert "  shrunk: {'epochs': None, 'steps': 2, 'batch_size': 8" in text  # What shrink did.
    assert ":eif_emp_79,shrink --workdir=" in text  # The command.
    assert "eif_emp lenet on mnist: test accuracy" in text  # Its output, as it ran.
    shown = set(re.findall(r"^(\S+)\.png$", text, re.MULTILINE))
    on_disk = {p.stem for p in (workdir / "report" / "report_figures").glob("*.png")}
    assert "accuracy_vs_compute" in shown and shown == on_disk
    figure_cell = next(c for c in notebook.cells if "figure" in c.metadata.get("tags", []))
    assert images(figure_cell) == len(on_disk)

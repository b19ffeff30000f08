"""The committed notebooks: their outputs are present and were produced by the current code.

Each notebook committed with outputs is executed again, offline, exactly as tools/run_notebooks.py
executes it (HF_HUB_OFFLINE=1, NUMPY_MIXER_WEIGHTS=random, fixed seeds), and the text every cell prints
is compared with the committed text: the same words, every number within 2% (residuals below 1e-3,
such as float32 rounding, always match). Cells tagged "nondeterministic" (timings) are not compared.
This is also where the notebooks run in CI: pyproject's testpaths leave notebooks/ (but not
notebooks/exercises/) out of nbmake, so no notebook is executed twice.
05_speed.ipynb (timings) and 08_pretrained_b16.ipynb (pretrained weights) are executed, not compared.
Regenerate the outputs after a change: python tools/run_notebooks.py
"""
import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "tools" / "run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_notebooks)


def test_every_notebook_is_listed():
    listed = set(run_notebooks.COMMITTED_WITH_OUTPUTS) | set(run_notebooks.EXECUTED_ONLY)
    assert {p.name for p in (ROOT / "notebooks").glob("*.ipynb")} == listed


@pytest.mark.parametrize("name", run_notebooks.COMMITTED_WITH_OUTPUTS)
def test_committed_outputs_are_current(name):
    path = ROOT / "notebooks" / name
    committed = nbformat.read(path, as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{name}: committed without outputs; run tools/run_notebooks.py"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"], f"{name}: committed with an error"
    if name != "04_whole_model.ipynb":  # 4 is all parity numbers: its pictures need trained weights (notebook 8)
        assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), f"{name}: no figure"
    assert path.stat().st_size < 1_000_000, f"{name}: {path.stat().st_size:,} bytes; keep figures small"
    problems = run_notebooks.differences(committed, run_notebooks.execute(path))
    assert not problems, f"{name}: outputs differ from the committed ones (python tools/run_notebooks.py " \
                         f"{path.relative_to(ROOT)} regenerates them):\n" + "\n".join(problems)


@pytest.mark.parametrize("name", run_notebooks.EXECUTED_ONLY)
def test_runs_offline(name):
    path = ROOT / "notebooks" / name
    if name == "08_pretrained_b16.ipynb":  # committed without outputs: offline they would show random weights
        assert all(not c.get("outputs") for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    run_notebooks.execute(path)  # raises nbclient's CellExecutionError, with the cell, if any cell fails


@pytest.mark.parametrize("committed, fresh, same", [
    ("max |diff| = 3.1e-06\n", "max |diff| = 9.5e-07\n", True),  # rounding residuals
    ("accuracy 98.1%\n", "accuracy 97.9%\n", True),  # within 2%
    ("accuracy 98.1%\n", "accuracy 90.0%\n", False),
    ("loss 0.021\n", "loss 0.035\n", False),
    ("shape (1, 196, 768)\n", "shape (1, 196, 512)\n", False),
    ("top class: cat\n", "top class: dog\n", False),
    ("a 1\nb 2\n", "a 1\n", False),
])
def test_comparison_can_fail(committed, fresh, same):
    assert (run_notebooks.compare_text(committed, fresh) is None) == same


def test_nondeterministic_cells_are_skipped():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("t", metadata={"tags": ["nondeterministic"]}),
                                         nbformat.v4.new_code_cell("x")])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="took 12 s\n")]
    other = nbformat.from_dict(nbformat.reads(nbformat.writes(nb), as_version=4))
    other.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="took 99 s\n")]
    assert run_notebooks.differences(nb, other) == []
    other.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="new text\n")]
    assert run_notebooks.differences(nb, other)

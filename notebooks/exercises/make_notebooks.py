"""Write the exercise notebooks from numpy_mixer.exercises' catalogue (statements, stubs, checks), without outputs.

Run from the repository root: python notebooks/exercises/make_notebooks.py
tests/test_exercises.py checks that every notebook still holds its exercises' current statements.
"""
import inspect
import os

import nbformat

from numpy_mixer.exercises import STUBS, catalogue

HERE = os.path.dirname(os.path.abspath(__file__))

NOTEBOOKS = {  # file -> (title, exercises, what the later exercises may import)
    "01_patches.ipynb": ("1. Patches: from an image to tokens", ["patchify", "stem"], None),
    "02_layernorm_gelu.ipynb": ("2. LayerNorm and GELU", ["layer_norm", "erf", "gelu"], None),
    "03_token_channel_mixing.ipynb": (
        "3. Token mixing and channel mixing", ["linear", "mlp", "token_mixing", "channel_mixing", "mixer_block"],
        "from numpy_mixer.layers import gelu, layer_norm  # the package's own; or paste yours from exercises 2"),
    "04_whole_model.ipynb": (
        "4. The whole model", ["global_pool", "forward"],
        "from numpy_mixer.layers import layer_norm, linear, mixer_block, stem  # or paste yours from exercises 1-3"),
    "05_preprocessing.ipynb": ("5. Preprocessing: a photo to the model's input", ["preprocess"], None),
    "06_cost.ipynb": ("6. Cost: parameters and multiply-adds", ["cost"], None),
    "07_backward.ipynb": (
        "7. Backward: the gradients, layer by layer",
        ["linear_backward", "layer_norm_backward", "gelu_backward", "softmax_cross_entropy_backward",
         "token_mixing_backward", "channel_mixing_backward", "mixer_block_backward", "global_pool_head_backward"],
        "from numpy_mixer.layers import erf, gelu, layer_norm, linear, token_mixing  # the forward, "
        "the package's own; or paste yours"),
}

INTRO = """\
Write each function yourself, then run the check under it. `check(name, fn)` runs your function on fixed
inputs and compares it with timm's answer (saved in the package, so no torch is needed); it prints one line:

- `exact` or `allclose (max diff ...)`: right;
- `WRONG: ...`: the place and size of the largest difference and, when your answer matches one of the classic
  mistakes (tanh GELU, LayerNorm eps or variance, a missing transpose or residual, ...), which one it looks like;
- `not implemented yet`: the stub is still there.

A backward exercise gets one such line per gradient (`dx`, `dweight`, ...), checked against torch autograd in
float64 and float32.

`show(name)` prints a statement again; with torch and timm installed, `check(name, fn, live=True)` also compares
with timm run now. Stuck? `hint(name)` gives the next hint each time you call it (1 the idea, 2 the shapes and
axes, 3 the NumPy calls), `hint(name, 2)` a given one. Worked solutions are in
`numpy_mixer/exercises/solutions.py`: try first."""


def stub_source(name):
    """The stub's code with the exercise's own name and a body to replace."""
    src = inspect.getsource(STUBS[name]).replace(f"def {name}_stub(", f"def {name}(")
    return src.replace(f'raise _todo("{name}")', f'raise NotImplementedError("{name}: your code here")').rstrip()


def notebook(title, names, imports):
    cells = [nbformat.v4.new_markdown_cell(f"# Exercises {title}\n\n{INTRO}")]
    setup = "import numpy as np\n\nfrom numpy_mixer.exercises import check, hint, show"
    if imports:
        setup += "\n" + imports
    cells.append(nbformat.v4.new_code_cell(setup))
    for name in names:
        e = catalogue.BY_NAME[name]
        cells.append(nbformat.v4.new_markdown_cell(
            f"## `{name}`: {e.summary}\n\n```text\n{e.statement}\n```\n\n"
            f"Stuck? `hint({name!r})` prints the next hint ({len(e.hints)} in all)."))
        cells.append(nbformat.v4.new_code_cell(stub_source(name)))
        # the `;` keeps the notebook from echoing check's True/False under the verdict line
        cells.append(nbformat.v4.new_code_cell(f"check({name!r}, {name});"))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main():
    for filename, (title, names, imports) in NOTEBOOKS.items():
        nb = notebook(title, names, imports)
        nbformat.validate(nb)
        path = os.path.join(HERE, filename)
        nbformat.write(nb, path)
        print(path, len(nb.cells), "cells")
    covered = [n for _, names, _ in NOTEBOOKS.values() for n in names]
    assert covered == [e.name for e in catalogue.EXERCISES], covered


if __name__ == "__main__":
    main()

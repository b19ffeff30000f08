"""Exercises: write each layer of MLP-Mixer yourself, forward and backward; check(name, fn) says if it is right.

    from numpy_mixer.exercises import check, hint, list_exercises, show, layer_norm_stub
    list_exercises()            # the exercises, in the walkthrough's order (the backward ones last)
    show("layer_norm")          # the statement: what to compute and why, the shapes, timm's details
    check("layer_norm", layer_norm_stub)          # prints "layer_norm: not implemented yet"
    def my_layer_norm(x, weight, bias, eps=1e-6): ...
    check("layer_norm", my_layer_norm)             # e.g. "layer_norm: allclose (max diff 4.8e-07)"
    hint("layer_norm")          # stuck? the next hint each call: 1 the idea, 2 the shapes and axes, 3 the NumPy calls
    check("layer_norm", my_layer_norm, live=True)  # also against timm run now, if torch and timm are installed

The answers are timm's (torch autograd's for the <layer>_backward exercises, in float64 and float32), computed
by tools/make_exercise_fixtures.py and shipped as safetensors, so checking needs only NumPy. A wrong answer is
compared with the classic mistakes, computed on the same inputs, and the verdict names the one it matches.
A backward exercise gets one verdict line per gradient. Worked solutions: numpy_mixer.exercises.solutions.
"""
from . import catalogue, stubs
from .checker import check, verdict

EXERCISES = [e.name for e in catalogue.EXERCISES]
STUBS = {name: getattr(stubs, f"{name}_stub") for name in EXERCISES}
for _name, _stub in STUBS.items():
    _stub.__doc__ = catalogue.BY_NAME[_name].statement
    globals()[f"{_name}_stub"] = _stub

HINT_LEVELS = ("the idea", "the shapes and axes", "the NumPy calls")
_hints_seen = {}  # exercise -> the last hint level shown


def _exercise(name):
    if name not in catalogue.BY_NAME:
        raise KeyError(f"no exercise {name!r}; the exercises are: {', '.join(EXERCISES)}")
    return catalogue.BY_NAME[name]


def list_exercises():
    """Print the exercises in order, one line each, and return their names."""
    step = None
    for e in catalogue.EXERCISES:
        if e.step != step:
            step = e.step
            print(f"{step}:")
        print(f"  {e.name:<31} {e.summary}")
    return list(EXERCISES)


def statement(name):
    """The text of exercise `name`: what to compute and why, the shapes, and timm's details."""
    return _exercise(name).statement


def show(name):
    """Print the statement of exercise `name`."""
    print(statement(name))


def hint_text(name, level):
    """Hint `level` (1, 2 or 3) of exercise `name`, as hint() prints it."""
    hints = _exercise(name).hints
    if level not in range(1, len(hints) + 1):
        raise ValueError(f"{name} has hints 1 to {len(hints)}, not {level!r}")
    return f"{name}, hint {level} of {len(hints)} ({HINT_LEVELS[level - 1]}): {hints[level - 1]}"


def hint(name, level=None):
    """Print the next hint of exercise `name` (1 the idea, 2 the shapes and axes, 3 the NumPy calls), or hint `level`.

    Each call without a level goes one step further; after the last it repeats the last.
    """
    if level is None:
        level = min(_hints_seen.get(name, 0) + 1, len(_exercise(name).hints))
    print(hint_text(name, level))
    _hints_seen[name] = max(_hints_seen.get(name, 0), level)


__all__ = ["check", "verdict", "hint", "hint_text", "list_exercises", "statement", "show", "EXERCISES",
           "STUBS"] + [f"{n}_stub" for n in EXERCISES]

"""Exercises: write each layer of MLP-Mixer yourself; check(name, fn) tells you, in one line, if it is right.

    from numpy_mixer.exercises import check, list_exercises, show, layer_norm_stub
    list_exercises()            # the exercises, in the walkthrough's order
    show("layer_norm")          # the statement: what to compute, shapes, timm's details
    def my_layer_norm(x, weight, bias, eps=1e-6): ...
    check("layer_norm", my_layer_norm)             # prints e.g. "layer_norm: allclose (max diff 4.8e-07)"
    check("layer_norm", my_layer_norm, live=True)  # also against timm run now, if torch and timm are installed

The answers are timm's, computed by tools/make_exercise_fixtures.py and shipped as safetensors, so
checking needs only NumPy. A wrong answer is compared with the classic mistakes, computed on the
same inputs, and the verdict names the one it matches. Worked solutions: numpy_mixer.exercises.solutions.
"""
from . import catalogue
from .checker import check, verdict
from .stubs import (channel_mixing_stub, erf_stub, forward_stub, gelu_stub, global_pool_stub, layer_norm_stub,
                    linear_stub, mixer_block_stub, mlp_stub, patchify_stub, preprocess_stub, stem_stub,
                    token_mixing_stub)

EXERCISES = [e.name for e in catalogue.EXERCISES]
STUBS = {name: globals()[f"{name}_stub"] for name in EXERCISES}
for _name, _stub in STUBS.items():
    _stub.__doc__ = catalogue.BY_NAME[_name].statement


def list_exercises():
    """Print the exercises in order, one line each, and return their names."""
    step = None
    for e in catalogue.EXERCISES:
        if e.step != step:
            step = e.step
            print(f"{step}:")
        print(f"  {e.name:<15} {e.summary}")
    return list(EXERCISES)


def statement(name):
    """The text of exercise `name`: what to compute, the shapes, and timm's details."""
    if name not in catalogue.BY_NAME:
        raise KeyError(f"no exercise {name!r}; the exercises are: {', '.join(EXERCISES)}")
    return catalogue.BY_NAME[name].statement


def show(name):
    """Print the statement of exercise `name`."""
    print(statement(name))


__all__ = ["check", "verdict", "list_exercises", "statement", "show", "EXERCISES", "STUBS"] + [
    f"{n}_stub" for n in EXERCISES]

"""The exercises: solutions pass, classic mistakes fail with the right hint, stubs fail cleanly, and the
shipped fixtures are still what timm gives today.

The wrong implementations below are written as a learner would write them (not taken from
numpy_mixer.exercises.mistakes), so each test is an independent check that the diagnosis works.
"""
import math

import numpy as np
import pytest
import timm  # noqa: F401  (the fixture test regenerates from timm: a missing timm must fail, not skip)
import torch  # noqa: F401
from PIL import Image

from numpy_mixer.exercises import (EXERCISES, STUBS, check, fixtures, hint, hint_text, layer_norm_stub, list_exercises,
                                   show, solutions, statement, verdict)
from numpy_mixer.exercises import backward_exercises as BX
from numpy_mixer.exercises import catalogue

from .exercise_wrong_answers import HELD_OUT, WRONG_FORWARD, measure


# --- the learner's building blocks, right, used inside the wrong answers ------------------------------------

def ln(x, weight, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + np.float32(eps)) * weight + bias


def gelu_exact(x):
    return x * (1 + solutions.erf(x / np.float32(math.sqrt(2)))) / 2


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.float32(math.sqrt(2 / math.pi)) * (x + np.float32(0.044715) * x ** 3)))


def mlp_with(act):
    def mlp(x, fc1, fc2):
        return act(x @ fc1["weight"].T + fc1["bias"]) @ fc2["weight"].T + fc2["bias"]
    return mlp


mlp = mlp_with(gelu_exact)


# --- wrong answers, one or more per classic mistake: (exercise, function, words the hint must contain) ------

def gelu_tanh_answer(x):
    return gelu_tanh(x)


def ln_eps_1e5(x, weight, bias, eps=1e-5):
    return ln(x, weight, bias, eps)


def ln_unbiased(x, weight, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(-1, ddof=1, keepdims=True) + np.float32(eps)) * weight + bias


def ln_annotated_transformer(x, weight, bias, eps=1e-6):
    return weight * (x - x.mean(-1, keepdims=True)) / (x.std(-1, ddof=1, keepdims=True) + np.float32(eps)) + bias


def ln_tokens_axis(x, weight, bias, eps=1e-6):
    mean = x.mean(1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(1, keepdims=True) + np.float32(eps)) * weight + bias


def ln_float64(x, weight, bias, eps=1e-6):
    x = x.astype(float)  # float64
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * weight + bias


def token_mixing_no_transposes(x, norm1, mlp_tokens):
    return x + mlp(ln(x, **norm1), **mlp_tokens)


def token_mixing_reshape(x, norm1, mlp_tokens):
    B, N, C = x.shape
    return x + mlp(ln(x, **norm1).reshape(B, C, N), **mlp_tokens).reshape(B, N, C)


def token_mixing_no_residual(x, norm1, mlp_tokens):
    return mlp(ln(x, **norm1).transpose(0, 2, 1), **mlp_tokens).transpose(0, 2, 1)


def token_mixing_tanh(x, norm1, mlp_tokens):
    return x + mlp_with(gelu_tanh)(ln(x, **norm1).transpose(0, 2, 1), **mlp_tokens).transpose(0, 2, 1)


def channel_mixing_no_residual(x, norm2, mlp_channels):
    return mlp(ln(x, **norm2), **mlp_channels)


def block_no_channel_residual(x, norm1, mlp_tokens, norm2, mlp_channels):
    x = x + mlp(ln(x, **norm1).swapaxes(1, 2), **mlp_tokens).swapaxes(1, 2)
    return mlp(ln(x, **norm2), **mlp_channels)


def linear_w_not_wt(x, weight, bias):
    return x @ weight + bias


def stem_w_not_wt(x, proj, patch_size=16):
    C = proj["weight"].shape[0]
    return solutions.patchify(x, patch_size) @ proj["weight"].reshape(C, -1) + proj["bias"]


def patchify_hwc(x, patch_size=16):
    B, c, h, w = x.shape
    P = patch_size
    t = x.transpose(0, 2, 3, 1).reshape(B, h // P, P, w // P, P, c).transpose(0, 1, 3, 2, 4, 5)  # [B, G, G, P, P, 3]
    return t.reshape(B, -1, P * P * c)


def stem_hwc(x, proj, patch_size=16):
    C = proj["weight"].shape[0]
    w = proj["weight"].reshape(C, -1)  # (c, h, w) order, but the patches are (h, w, c)
    return patchify_hwc(x, patch_size) @ w.T + proj["bias"]


def global_pool_max(x):
    return x.max(axis=1)


def forward_max_pool(x, params, patch_size=16):
    x = solutions.stem(x, params["stem"]["proj"], patch_size)
    for block in params["blocks"]:
        x = solutions.mixer_block(x, **block)
    x = ln(x, **params["norm"])
    return x.max(axis=1) @ params["head"]["weight"].T + params["head"]["bias"]


def _resize_crop(img, size, interpolation, crop=True):
    pil = Image.fromarray(img)
    if crop:
        w, h = pil.size
        s = 256 / min(w, h)
        pil = pil.resize((int(w * s) if w > h else 256, 256 if w > h else int(h * s)), interpolation)
        left, top = (pil.size[0] - size) // 2, (pil.size[1] - size) // 2
        pil = pil.crop((left, top, left + size, top + size))
    else:
        pil = pil.resize((size, size), interpolation)
    x = np.asarray(pil).astype(np.float32) / 255
    return ((x - 0.5) / 0.5).transpose(2, 0, 1)


def preprocess_bilinear(img):
    return _resize_crop(img, 224, Image.Resampling.BILINEAR)


def preprocess_no_crop(img):
    return _resize_crop(img, 224, Image.Resampling.BICUBIC, crop=False)


def preprocess_float64(img):
    pil = Image.fromarray(img)
    w, h = pil.size
    pil = pil.resize((int(w * 256 / h), 256) if w > h else (256, int(h * 256 / w)), Image.Resampling.BICUBIC)
    left, top = round((pil.size[0] - 224) / 2), round((pil.size[1] - 224) / 2)
    x = np.asarray(pil.crop((left, top, left + 224, top + 224))) / 255.0  # uint8 / float: float64
    return ((x - 0.5) / 0.5).transpose(2, 0, 1)


def erf_no_symmetry(x):
    t = 1 / (1 + np.float32(0.3275911) * x)
    y = 1 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-x * x)
    return y.astype(np.float32)


def erf_math_float64(x):
    return np.vectorize(math.erf)(x)  # float64 out


WRONG_ANSWERS = [
    ("gelu", gelu_tanh_answer, ["tanh GELU instead of erf"]),
    ("token_mixing", token_mixing_tanh, ["tanh GELU instead of erf"]),
    ("layer_norm", ln_eps_1e5, ["eps 1e-5"]),
    ("layer_norm", ln_unbiased, ["unbiased variance"]),
    ("layer_norm", ln_annotated_transformer, ["unbiased variance", "eps outside the square root"]),
    ("layer_norm", ln_tokens_axis, ["wrong axis", "axis 1"]),
    ("layer_norm", ln_float64, ["float64 upcast"]),
    ("token_mixing", token_mixing_no_transposes, ["without the transposes"]),
    ("token_mixing", token_mixing_reshape, ["reshape instead of transpose"]),
    ("token_mixing", token_mixing_no_residual, ["missing residual"]),
    ("channel_mixing", channel_mixing_no_residual, ["missing residual"]),
    ("mixer_block", block_no_channel_residual, ["missing residual", "channel mixing"]),
    ("linear", linear_w_not_wt, ["W instead of W.T"]),
    ("stem", stem_w_not_wt, ["W instead of W.T"]),
    ("patchify", patchify_hwc, ["(h, w, c) order"]),
    ("stem", stem_hwc, ["(h, w, c) order"]),
    ("global_pool", global_pool_max, ["max instead of mean pooling"]),
    ("forward", forward_max_pool, ["max instead of mean pooling"]),
    ("preprocess", preprocess_bilinear, ["interpolation", "bicubic"]),
    ("preprocess", preprocess_no_crop, ["no centre crop"]),
    ("preprocess", preprocess_float64, ["float64 upcast"]),
    ("erf", erf_no_symmetry, ["erf is odd"]),
    ("erf", erf_math_float64, ["float64 upcast"]),
]


@pytest.mark.parametrize("name", EXERCISES)
def test_worked_solution_passes(name, capsys):
    assert check(name, getattr(solutions, name)) is True
    lines = capsys.readouterr().out.strip().split("\n")
    exercise = catalogue.BY_NAME[name]
    heads = [f"{name} {o}: " for o in exercise.outputs] if exercise.named else [f"{name}: "]
    assert len(lines) == len(heads)  # one verdict line per output (per gradient), in order
    for line, head in zip(lines, heads):
        assert line == head + "exact" or line.startswith(head + "allclose (max diff "), line


@pytest.mark.parametrize("name, wrong, words", WRONG_ANSWERS, ids=[f"{n}-{f.__name__}" for n, f, _ in WRONG_ANSWERS])
def test_classic_mistake_fails_with_its_hint(name, wrong, words, capsys):
    assert check(name, wrong) is False
    out, err = capsys.readouterr()
    line = out.strip()
    assert "\n" not in line and line.startswith(f"{name}: WRONG: ") and not err
    hint = line.split(" - looks like: ", 1)[1]
    for word in words:
        assert word in hint, line


@pytest.mark.parametrize("name", EXERCISES)
def test_every_catalogued_mistake_is_told_apart(name):
    """Each mistake in the catalogue, run as an answer, fails and gets its own hint (none shadows another);
    for an exercise with named outputs, every output line that is WRONG names this mistake."""
    exercise = catalogue.BY_NAME[name]
    assert exercise.mistakes
    for hint_, wrong in exercise.mistakes:
        ok, text = verdict(name, wrong)
        assert not ok, text
        wrong_lines = [line for line in text.split("\n") if "WRONG" in line]
        assert wrong_lines and all(line.endswith("looks like: " + hint_) for line in wrong_lines), text


def test_wrong_forward_answers_written_before_the_catalogue_get_their_hint():
    """tests/exercise_wrong_answers.py: 35 wrong answers written as a learner would before the catalogue was broadened
    (7 got the right hint then); now each gets the right one, none a misleading one, and none passes."""
    right, misleading, silent, passed = measure()
    assert not passed and not misleading, passed + misleading
    assert len(right) == len(WRONG_FORWARD) and not silent, silent


def test_held_out_wrong_answers_never_pass_nor_mislead():
    """13 wrong answers written after the catalogue: a hint may be missing, but none is misleading, none passes."""
    right, misleading, silent, passed = measure(HELD_OUT)
    assert not passed and not misleading, passed + misleading
    assert len(right) >= 11, silent


def test_patchify_order_is_read_off_the_values():
    """patchify's diagnosis traces each value back to its pixel: any order mix-up is named, catalogued or not."""
    def patchify_hcw(x, patch_size=16):
        B, c, h, w = x.shape
        P = patch_size
        return x.reshape(B, c, h // P, P, w // P, P).transpose(0, 2, 4, 3, 1, 5).reshape(B, -1, c * P * P)
    ok, line = verdict("patchify", patchify_hcw)
    assert not ok and line.endswith("looks like: each patch flattened in (h, c, w) order; the conv kernel [C, 3, P, P] "
                                    "is stored (c, h, w)")


def test_transpose_hint_names_the_axes():
    from .exercise_wrong_answers import token_mixing_dot_T, token_mixing_swap01
    ok, line = verdict("token_mixing", token_mixing_swap01)
    assert "swapaxes(0, 1) swaps axes 0 and 1" in line and "transposes axes 1 and 2 only" in line
    ok, line = verdict("token_mixing", token_mixing_dot_T)
    assert ".T (or .transpose()) reverses all three axes" in line and "without the transposes" not in line
    ok, line = verdict("token_mixing", lambda x, n, m: solutions.token_mixing(x, n, m) * np.float32(1.5))
    assert not ok and "looks like" not in line  # a right transpose is not blamed


def test_preprocess_cases_catch_rounding():
    """The portrait case's long side, 295.82, has a fractional part >= 0.5 (round != int); the landscape's crop
    offset is 58.5 (round-half-even 58, half-up 59) and the portrait's 35.5 (36, floor 35)."""
    from .exercise_wrong_answers import _prep
    for long_side in (round, math.ceil):
        ok, line = verdict("preprocess", lambda img: _prep(img, long_side=long_side))
        assert not ok and "torchvision's Resize truncates it" in line
    for offset in (lambda d: d // 2, lambda d: int(d / 2 + 0.5), lambda d: math.ceil(d / 2)):
        ok, line = verdict("preprocess", lambda img: _prep(img, offset=offset))
        assert not ok and "crop offset" in line, line
    assert check("preprocess", lambda img: _prep(img)) is True


def test_unknown_mistake_gets_location_and_size():
    ok, line = verdict("layer_norm", lambda x, w, b, eps=1e-6: ln(x, w, b, eps) * np.float32(1.01))
    assert not ok and "looks like" not in line
    assert line.startswith("layer_norm: WRONG: max diff ") and " at [" in line and "expected" in line


def test_shape_and_type_mistakes():
    ok, line = verdict("global_pool", lambda x: x.mean(axis=2))  # N != C on the first case: wrong shape
    assert not ok and "shape (2, 16), expected (2, 24)" in line and "wrong axis (channels)" in line
    ok, line = verdict("global_pool", lambda x: None)
    assert not ok and "returned None" in line
    ok, line = verdict("linear", lambda x, w, b: (x @ w.T + b).tolist())
    assert not ok and "returned a list" in line


def test_error_in_learner_code_is_one_line():
    def broken(x, weight, bias):
        return x @ weight + bias  # raises on the non-square case, runs (wrongly) on the square one
    ok, line = verdict("linear", broken)
    assert not ok and line.startswith("linear: WRONG: raised ValueError: matmul") and "W instead of W.T" in line


@pytest.mark.parametrize("name", EXERCISES)
def test_stub_fails_cleanly(name, capsys):
    assert check(name, STUBS[name]) is False
    out, err = capsys.readouterr()
    assert out == f"{name}: not implemented yet\n" and not err


def test_calling_another_stub_is_named():
    ok, line = verdict("mlp", lambda x, fc1, fc2: STUBS["gelu"](x @ fc1["weight"].T + fc1["bias"]))
    assert not ok and line == "mlp: not implemented yet (gelu is still a stub)"


def test_learner_api(capsys):
    names = list_exercises()
    assert names == EXERCISES and names[0] == "patchify" and names[12] == "preprocess" and names[13] == "cost"
    backward = [n for n in names if n.endswith("_backward")]
    assert names[14:] == backward and len(backward) == 8  # after the forward ones
    show("layer_norm")
    out = capsys.readouterr().out
    assert "BIASED variance" in out and "layer_norm(x, weight, bias, eps=1e-6)" in out
    assert statement("layer_norm") == layer_norm_stub.__doc__
    with pytest.raises(KeyError, match="no exercise"):
        statement("attention")
    ok, line = verdict("attention", print)
    assert not ok and "no such exercise" in line


def test_live_check_against_timm(capsys):
    assert check("mixer_block", solutions.mixer_block, live=True) is True
    line = capsys.readouterr().out.strip()
    assert "; timm live: " in line and "WRONG" not in line


def test_shipped_fixtures_equal_what_timm_gives_today():
    """Regenerate every fixture in memory (seeded inputs, timm's outputs) and compare with the shipped files."""
    shipped = fixtures.load()
    arrays, metadata = fixtures.build_fixtures()
    assert set(arrays) == set(shipped.arrays)
    assert metadata["b16_weights_sha256"] == shipped.metadata["b16_weights_sha256"]
    answers = {f"{c.out}/{o}" if e.named else c.out for e in catalogue.EXERCISES for c in e.cases
               for o in (e.outputs or [None])}
    assert answers <= set(arrays)
    for key, fresh in arrays.items():
        old = shipped.arrays[key]
        assert old.dtype == fresh.dtype and old.shape == fresh.shape, key
        if key in answers and fresh.dtype.kind == "i":  # the counts: exact
            assert old == fresh and fresh > 0, key
        elif key in answers:  # timm's answers: equal up to the last bits of float32 (BLAS may differ)
            scale = float(np.abs(fresh).max())
            assert scale > 0 and np.std(fresh) > 0.1 * min(scale, 1), key  # a spread: a zero answer matches anything
            np.testing.assert_allclose(old, fresh, rtol=1e-6, atol=1e-6 * scale, err_msg=key)
        else:  # the inputs are seeded: bit for bit
            np.testing.assert_array_equal(old, fresh, err_msg=key)


def test_fixtures_are_small_safetensors():
    import os
    total = 0
    for name in fixtures.FIXTURE_FILES:
        path = os.path.join(fixtures.FIXTURE_DIR, name)
        with open(path, "rb") as f:
            assert not f.read(2).startswith(b"\x80")  # not a pickle
        total += os.path.getsize(path)
    assert total < 5e6
    assert os.path.getsize(os.path.join(fixtures.FIXTURE_DIR, "backward.safetensors")) < 400e3  # the backward ones


def test_exercise_notebooks_hold_current_statements_without_outputs():
    """notebooks/exercises/ (made by make_notebooks.py): every exercise, in order, with today's statement,
    its stub and its check; committed without outputs."""
    import json
    from pathlib import Path
    folder = Path(__file__).resolve().parent.parent / "notebooks" / "exercises"
    seen = []
    for path in sorted(folder.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        text = {kind: "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == kind)
                for kind in ("markdown", "code")}
        for c in cells:
            if c["cell_type"] == "code":
                assert not c["outputs"] and c["execution_count"] is None, f"{path.name} has outputs"
        for name in EXERCISES:
            if f"check({name!r}, {name})" in text["code"]:
                seen.append(name)
                assert catalogue.BY_NAME[name].statement in text["markdown"], f"{path.name}: stale statement of {name}"
                assert f'raise NotImplementedError("{name}: your code here")' in text["code"]
                # the check cell ends with `;`: no True/False echoed under the verdict line
                assert f"check({name!r}, {name});" in text["code"], f"{path.name}: {name}'s check cell echoes"
        metadata = json.loads(path.read_text())["metadata"]
        assert metadata["kernelspec"]["name"] == "python3", path.name
    assert seen == EXERCISES


def test_checks_work_without_torch():
    """A learner with NumPy only: checks run from the shipped fixtures; live=True says it is skipped."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\n"
            "from numpy_mixer.exercises import check, solutions\n"
            "assert check('mixer_block', solutions.mixer_block, live=True)\n"
            "assert not check('gelu', lambda x: x)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("mixer_block: allclose") and lines[0].endswith("timm live: skipped (needs torch and timm: pip install timm)")
    assert lines[1].startswith("gelu: WRONG: ")


# --- statements and hints ---------------------------------------------------------------------------------

CODE_MARKS = ["return ", "np.", ".swapaxes(", ".transpose(", ".reshape(", "@ weight", "def ", "**norm", "= layer_norm(",
              "= mlp(", "Image.Resampling", ".mean(axis"]


@pytest.mark.parametrize("name", EXERCISES)
def test_statement_states_the_task_not_the_code(name):
    """The statement has the prose, the shapes and timm's details; code is only in the third hint and solutions.py."""
    text = statement(name)
    for mark in CODE_MARKS:
        assert mark not in text, f"{name}'s statement holds code: {mark!r}"
    assert "->" in text and "Checked" in text  # the shapes in and out, and what it is checked on
    hints = catalogue.BY_NAME[name].hints
    assert len(hints) == 3 and all(len(h) > 20 for h in hints)
    assert len(set(hints)) == 3


def test_hints_come_one_at_a_time(capsys):
    from numpy_mixer import exercises
    exercises._hints_seen.pop("token_mixing", None)
    for level in (1, 2, 3, 3):  # the next each call, then the last again
        hint("token_mixing")
        out = capsys.readouterr().out.strip()
        assert out == hint_text("token_mixing", level) and f"hint {level} of 3" in out
    assert "the NumPy calls" in hint_text("token_mixing", 3) and "swapaxes(1, 2)" in hint_text("token_mixing", 3)
    assert "the idea" in hint_text("token_mixing", 1) and "swapaxes" not in hint_text("token_mixing", 1)
    hint("gelu_backward", 2)
    assert "hint 2 of 3 (the shapes and axes)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="hints 1 to 3"):
        hint("gelu", 4)
    with pytest.raises(KeyError, match="no exercise"):
        hint("attention")


# --- backward: wrong answers as a learner writes them (not from mistakes.py) ------------------------------------

def lin_back(dout, x, weight, bias):
    d2, x2 = dout.reshape(-1, dout.shape[-1]), x.reshape(-1, x.shape[-1])
    return dout @ weight, {"weight": d2.T @ x2, "bias": d2.sum(0)}


def lin_back_bias_not_summed(dout, x, weight, bias):
    dx, g = lin_back(dout, x, weight, bias)
    return dx, {"weight": g["weight"], "bias": dout}


def lin_back_bias_batch_only(dout, x, weight, bias):
    dx, g = lin_back(dout, x, weight, bias)
    return dx, {"weight": g["weight"], "bias": dout.sum(axis=0)}


def lin_back_weight_T(dout, x, weight, bias):
    d2, x2 = dout.reshape(-1, dout.shape[-1]), x.reshape(-1, x.shape[-1])
    return dout @ weight.T, {"weight": d2.T @ x2, "bias": d2.sum(0)}


def ln_back(dout, x, weight, bias, eps=1e-6, mean_term=True, var_term=True):
    mu = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + x.dtype.type(eps))
    xhat = (x - mu) * rstd
    g = dout * weight
    dx = g - (g.mean(-1, keepdims=True) if mean_term else 0)
    dx = dx - (xhat * (g * xhat).mean(-1, keepdims=True) if var_term else 0)
    C = x.shape[-1]
    return rstd * dx, {"weight": (dout * xhat).reshape(-1, C).sum(0), "bias": dout.reshape(-1, C).sum(0)}


def ln_back_no_mean_term(dout, x, weight, bias, eps=1e-6):
    return ln_back(dout, x, weight, bias, eps, mean_term=False)


def ln_back_no_var_term(dout, x, weight, bias, eps=1e-6):
    return ln_back(dout, x, weight, bias, eps, var_term=False)


def gelu_back_no_x_pdf(dout, x):
    return dout * 0.5 * (1 + np.vectorize(math.erf, otypes=[x.dtype])(x / np.sqrt(2))).astype(x.dtype)


def _tok_back(dout, x, norm1, mlp_tokens, skip=True, transpose_back=True):
    fc1, fc2 = mlp_tokens["fc1"], mlp_tokens["fc2"]
    y = solutions.layer_norm(x, norm1["weight"], norm1["bias"]).swapaxes(1, 2)  # [B, C, N]
    h = y @ fc1["weight"].T + fc1["bias"]
    da, dfc2 = lin_back(dout.swapaxes(1, 2), solutions._gelu_any(h), fc2["weight"], fc2["bias"])
    dy, dfc1 = lin_back(solutions.gelu_backward(da, h), y, fc1["weight"], fc1["bias"])
    dx, dn = ln_back(dy.swapaxes(1, 2) if transpose_back else dy, x, **norm1)
    return (dout + dx if skip else dx), {"norm1": dn, "mlp_tokens": {"fc1": dfc1, "fc2": dfc2}}


def tok_back_no_skip(dout, x, norm1, mlp_tokens):
    return _tok_back(dout, x, norm1, mlp_tokens, skip=False)


def tok_back_not_transposed_back(dout, x, norm1, mlp_tokens):
    return _tok_back(dout, x, norm1, mlp_tokens, transpose_back=False)


def pool_head_back_no_1_over_n(dout, x, weight, bias):
    dpooled, g = lin_back(dout, x.mean(1), weight, bias)
    return np.repeat(dpooled[:, None], x.shape[1], axis=1), g


def ce_back_no_mean(logits, labels):
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return p


WRONG_BACKWARD = [
    ("linear_backward", lin_back_bias_not_summed, "dbias", BX.BIAS_NOT_SUMMED),
    ("linear_backward", lin_back_bias_batch_only, "dbias", BX.BIAS_FIRST_AXIS),
    ("linear_backward", lin_back_weight_T, "dx", BX.DX_WEIGHT_T),
    ("layer_norm_backward", ln_back_no_mean_term, "dx", BX.LN_NO_MEAN),
    ("layer_norm_backward", ln_back_no_var_term, "dx", BX.LN_NO_VAR),
    ("gelu_backward", gelu_back_no_x_pdf, "dx", BX.GELU_NO_XPDF),
    ("token_mixing_backward", tok_back_no_skip, "dx", BX.NO_SKIP),
    ("token_mixing_backward", tok_back_not_transposed_back, "dx", BX.NOT_TRANSPOSED_BACK),
    ("global_pool_head_backward", pool_head_back_no_1_over_n, "dx", BX.POOL_NO_1_N),
    ("softmax_cross_entropy_backward", ce_back_no_mean, "dlogits", BX.CE_NO_MEAN),
]


@pytest.mark.parametrize("name, wrong, grad, hint_", WRONG_BACKWARD, ids=[f.__name__ for _, f, _, _ in WRONG_BACKWARD])
def test_backward_mistake_named_on_its_gradient(name, wrong, grad, hint_, capsys):
    assert check(name, wrong) is False
    lines = capsys.readouterr().out.strip().split("\n")
    line = next(line for line in lines if line.startswith(f"{name} {grad}: "))
    assert line.startswith(f"{name} {grad}: WRONG: ") and line.endswith("looks like: " + hint_), lines


def test_right_backward_answer_gets_one_line_per_gradient(capsys):
    assert check("linear_backward", lin_back) is True
    lines = capsys.readouterr().out.strip().split("\n")
    assert [line.split(":")[0] for line in lines] == ["linear_backward dx", "linear_backward dweight",
                                                       "linear_backward dbias"]
    assert check("token_mixing_backward", _tok_back) is True


def test_backward_dtype_and_shape_problems():
    ok, text = verdict("gelu_backward", lambda dout, x: solutions.gelu_backward(dout, x).astype(np.float32))
    assert not ok and "dtype float32, expected float64" in text
    ok, text = verdict("linear_backward", lambda dout, x, w, b: dout @ w)
    assert not ok and "expected (dx, grads)" in text
    ok, text = verdict("linear_backward", lambda dout, x, w, b: (dout @ w, {"w": w}))
    assert not ok and "expected the gradients dx, dweight, dbias" in text


def test_live_backward_check_against_torch(capsys):
    assert check("layer_norm_backward", solutions.layer_norm_backward, live=True) is True
    assert "layer_norm_backward: timm live: allclose" in capsys.readouterr().out


# --- cost ---------------------------------------------------------------------------------------------------

def test_cost_of_mixer_b16_224_is_exact():
    counts = solutions.cost(BX.COST_CONFIGS["b16"])
    assert counts["params"] == 59_880_472  # the count of the original paper's code and timm
    assert round(counts["macs"] / 1e9, 1) == 12.6  # timm's model card: 12.6 GMACs
    store = fixtures.load()
    for k, v in counts.items():  # the fixtures: timm's numel and torch's FlopCounterMode / 2
        assert int(store[f"cost/b16/{k}"]) == v


def test_cost_mistakes_a_learner_makes():
    def no_bias(config):
        c = solutions.cost(config)
        P, C, T, H, K = (config[k] for k in ("patch_size", "embed_dim", "tokens_dim", "channels_dim", "num_classes"))
        N = (config["img_size"] // P) ** 2
        block = 4 * C + 2 * N * T + 2 * C * H
        return dict(c, block_params=block, params=3 * P * P * C + config["depth"] * block + 2 * C + C * K)
    ok, text = verdict("cost", no_bias)
    assert not ok and "cost block_params: WRONG: got 4,872,192, expected 4,876,612" in text and BX.NO_BIASES in text
    ok, text = verdict("cost", lambda config: {k: 2 * v if "macs" in k else v
                                                 for k, v in solutions.cost(config).items()})
    assert not ok and BX.FLOPS_NOT_MACS in text and "cost params: exact" in text
    ok, text = verdict("cost", lambda config: {k: float(v) + 0.5 for k, v in solutions.cost(config).items()})
    assert not ok and "expected a whole number" in text

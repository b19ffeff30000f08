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

from numpy_mixer.exercises import (EXERCISES, STUBS, check, fixtures, layer_norm_stub, list_exercises, show,
                                   solutions, statement, verdict)
from numpy_mixer.exercises import catalogue


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
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and (line == f"{name}: exact" or line.startswith(f"{name}: allclose (max diff "))


@pytest.mark.parametrize("name, wrong, words", WRONG_ANSWERS, ids=[f"{n}-{f.__name__}" for n, f, _ in WRONG_ANSWERS])
def test_classic_mistake_fails_with_its_hint(name, wrong, words, capsys):
    assert check(name, wrong) is False
    out, err = capsys.readouterr()
    line = out.strip()
    assert "\n" not in line and line.startswith(f"{name}: WRONG: ") and not err
    hint = line.split(" - looks like: ", 1)[1]
    for word in words:
        assert word in hint, line


def test_every_catalogued_mistake_is_told_apart():
    """Each mistake in the catalogue, run as an answer, fails and gets its own hint (none shadows another)."""
    for exercise in catalogue.EXERCISES:
        for hint, wrong in exercise.mistakes:
            ok, line = verdict(exercise.name, wrong)
            assert not ok and line.endswith("looks like: " + hint), line


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
    assert names == EXERCISES and names[0] == "patchify" and names[-1] == "preprocess"
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
    for key, fresh in arrays.items():
        old = shipped.arrays[key]
        assert old.dtype == fresh.dtype and old.shape == fresh.shape, key
        if key.endswith("/out"):  # timm's answers: equal up to the last bits of float32 (BLAS may differ)
            scale = float(np.abs(fresh).max())
            assert scale > 0 and np.std(fresh) > 0.1, key  # real spread: a zero answer would match anything
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

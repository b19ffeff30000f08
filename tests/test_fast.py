"""The fast path (numpy_mixer.fast) against the readable layers, torch's GELU, and the batching around it.

Every Mixer architecture, odd and single batches, four head sizes; float32 checked at every
NumPy operation; the erf bound; predict / CLI batching; and one tiny run of the benchmark.
"""
import collections
import math
import os
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from numpy_mixer import fast, layers, predict
from numpy_mixer.checkpoint import config_for, random_state_dict, save_checkpoint
from numpy_mixer.errors import MixerError
from numpy_mixer.model import MlpMixer, load_model
from numpy_mixer.weights import ARCHITECTURES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (architecture, batch size, classes): each architecture once, batch 1 and odd batches, heads of
# 1000, 21843 (in21k), 11221 (miil in21k) and 0 (pooled features) classes
CASES = [("mixer_s32_224", 3, 1000), ("mixer_s16_224", 1, 21843), ("mixer_b32_224", 2, 11221),
         ("mixer_b16_224", 1, 1000), ("mixer_b16_224", 5, 1000), ("mixer_l32_224", 2, 0),
         ("mixer_l16_224", 1, 1000)]


def rel_err(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def test_cases_cover_every_architecture():
    assert {arch for arch, _, _ in CASES} == set(ARCHITECTURES)


@pytest.mark.parametrize("arch,batch,classes", CASES, ids=[f"{a}-B{b}-K{k}" for a, b, k in CASES])
def test_fast_matches_readable(arch, batch, classes):
    model = MlpMixer(random_state_dict(config_for(arch, num_classes=classes), seed=batch), source=arch)
    x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    fast_out = model(x)  # the default is the fast path
    readable = model(x, fast=False)
    assert fast_out.dtype == readable.dtype == np.float32
    assert fast_out.shape == (batch, classes or model.num_features)
    assert readable.std() > 0.1  # real spread: not a zero head matching anything
    assert rel_err(fast_out, readable) < 1e-5, f"{arch}: fast vs readable logits"
    if batch > 1:  # different images give different answers (no mix-up across the batch)
        assert np.abs(fast_out[0] - fast_out[1]).max() > 1e-3


def test_fast_forward_features_matches_and_is_the_same_however_the_work_is_shared(monkeypatch):
    """Any number of workers, and a worker slowed down so that it takes fewer tasks: the same bits."""
    model = MlpMixer(random_state_dict(config_for("mixer_s16_224", depth=3), seed=1))
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224), dtype=np.float32)
    readable = model.forward_features(x, fast=False)
    reference = fast.forward_features(x, model.params, model.config.patch_size, workers=1)
    assert reference.dtype == np.float32 and reference.shape == (3, 196, 512)
    assert rel_err(reference, readable) < 1e-5
    for workers in (2, 3):
        tokens = fast.forward_features(x, model.params, model.config.patch_size, workers=workers)
        np.testing.assert_array_equal(tokens, reference, err_msg=f"{workers} workers")
    with threadpool_limits(1, user_api="blas"):  # the default worker count follows the BLAS thread count
        np.testing.assert_array_equal(fast.forward_features(x, model.params, model.config.patch_size), reference)

    taken = collections.Counter()
    part = fast.channel_mixing_part

    def slowed(*args):  # every channel-MLP task the main thread takes starts late
        main = threading.current_thread() is threading.main_thread()
        taken[main] += 1
        if main:
            time.sleep(0.05)
        return part(*args)

    monkeypatch.setattr(fast, "channel_mixing_part", slowed)
    tokens = fast.forward_features(x, model.params, model.config.patch_size, workers=2)
    np.testing.assert_array_equal(tokens, reference)
    # the slow main thread took fewer tasks than the helper: no fixed split, which would give it half or more
    assert 0 < taken[True] < taken[False], taken


class Float32Only(np.ndarray):
    """An array that fails any NumPy operation taking or giving anything but float32 (bool masks allowed)."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=(), **kwargs):
        for value in inputs + tuple(out):
            dtype = np.asarray(value).dtype if not isinstance(value, (int, float)) else None
            if isinstance(value, float):
                raise AssertionError(f"{ufunc.__name__}: a Python float mixed in (write np.float32(...))")
            if dtype is not None and dtype not in (np.float32, np.bool_):
                raise AssertionError(f"{ufunc.__name__}: operand of dtype {dtype}")
        plain_in = [v.view(np.ndarray) if isinstance(v, Float32Only) else v for v in inputs]
        plain_out = tuple(v.view(np.ndarray) if isinstance(v, Float32Only) else v for v in out)
        if plain_out:
            kwargs["out"] = plain_out
        result = getattr(ufunc, method)(*plain_in, **kwargs)
        for r in result if isinstance(result, tuple) else (result,):
            if isinstance(r, np.ndarray):
                assert r.dtype in (np.float32, np.bool_), f"{ufunc.__name__} gave {r.dtype}"
        if plain_out:
            return out[0] if len(out) == 1 else out
        return result.view(Float32Only) if isinstance(result, np.ndarray) and result.ndim else result


def test_every_operation_stays_float32(monkeypatch):
    """Weights, input and every work buffer only take float32 operands: a float64 scalar or array
    anywhere in the fast path (a silent upcast that the final float32 output would hide) fails."""
    def as_float32_only(tree):
        if isinstance(tree, dict):
            return {k: as_float32_only(v) for k, v in tree.items()}
        if isinstance(tree, list):
            return [as_float32_only(v) for v in tree]
        return np.asarray(tree).view(Float32Only)

    get = fast._Scratch.get
    monkeypatch.setattr(fast, "_plain", as_float32_only)
    monkeypatch.setattr(fast._Scratch, "get", lambda self, name, shape: get(self, name, shape).view(Float32Only))
    monkeypatch.setattr(fast, "_local", type(fast._local)())  # fresh work buffers
    model = MlpMixer(random_state_dict(config_for("mixer_s32_224", depth=2)))
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32).view(Float32Only)
    tokens = fast.forward_features(x, model.params, model.config.patch_size, workers=2)
    assert tokens.dtype == np.float32
    with pytest.raises(AssertionError, match="float64|Python float"):  # the check itself can fail
        np.multiply(x, np.float64(0.5))
    with pytest.raises(TypeError, match="float32"):
        fast.forward_features(x.view(np.ndarray).astype(np.float64), model.params, model.config.patch_size)


def test_float64_models_take_the_readable_path():
    model = MlpMixer(random_state_dict(config_for("mixer_s32_224", depth=1))).astype(np.float64)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224))
    out = model(x)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, model(x, fast=False))


def test_fast_gelu_is_as_accurate_as_the_readable_one():
    x = np.concatenate([np.linspace(-10, 10, 2_000_001, dtype=np.float32),
                        np.geomspace(1e-38, 10, 200_000).astype(np.float32),
                        -np.geomspace(1e-38, 10, 200_000).astype(np.float32),
                        np.float32([0, -0.0, 1, -1, 1e20, -1e20, 3e38, -3e38])])
    got = fast.gelu_(x.copy(), fast._Scratch())
    assert got.dtype == np.float32
    x64 = x.astype(np.float64)
    exact = x64 * 0.5 * (1 + np.frompyfunc(math.erf, 1, 1)(x64 / math.sqrt(2)).astype(np.float64))
    err = np.abs(got - exact)
    readable_err = np.abs(layers.gelu(x) - exact)
    bound = 2.5e-7 * np.maximum(1, np.abs(x64))  # about the float32 rounding of x itself
    assert np.all(readable_err <= bound)
    worst = np.argmax(err / bound)
    assert np.all(err <= bound), f"GELU error {err[worst]:.3g} at x = {x[worst]}"
    assert np.isnan(fast.gelu_(np.float32([np.nan]), fast._Scratch()))[0]


def test_fast_gelu_matches_torch():
    tiny = np.geomspace(1e-30, 12, 2_000_000).astype(np.float32)  # dense near 0, where the error is relative
    x = np.concatenate([np.linspace(-12, 12, 400_001, dtype=np.float32), tiny, -tiny,
                        np.float32([0, 60, -60, 1e30, -1e30])])
    got = fast.gelu_(x.copy(), fast._Scratch())
    want = torch.nn.functional.gelu(torch.from_numpy(x.astype(np.float64))).numpy()
    assert got.dtype == np.float32
    # within 3e-7 relative to |x| (2.5 float32 steps of GELU(x) ~ x/2 near 0), 2.5e-7 x max(1, |x|) further out
    assert np.all(np.abs(got - want) <= np.minimum(3e-7 * np.abs(x), 2.5e-7 * np.maximum(1, np.abs(x))) + 1e-37)
    twin = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()  # torch's own float32 GELU
    moderate = np.abs(x) <= 60
    assert np.all(np.abs(got - twin)[moderate] <= 1e-6 * np.maximum(1, np.abs(x[moderate])))


def test_fast_path_does_not_copy_the_weights(make_checkpoint):
    path, _ = make_checkpoint("mixer_b16_224")
    model = load_model(str(path))
    assert isinstance(model.params["blocks"][0]["mlp_channels"]["fc1"]["weight"], np.memmap)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    model(x)  # work buffers of this thread now exist
    weight_bytes = 4 * model.num_params()
    tracemalloc.start()
    try:
        model(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < weight_bytes / 10, f"the fast path allocated {peak / 2**20:.0f} MB for one image"


@pytest.fixture(scope="module")
def small_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fast") / "s32-2.safetensors"
    save_checkpoint(random_state_dict(config_for("mixer_s32_224", depth=2), seed=3), path)
    return path


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, name in enumerate(["b.png", "a.jpg", "c.jpeg", "d.bmp", "e.webp"]):
        Image.fromarray(rng.integers(0, 256, (60 + 30 * i, 90, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_batches_give_the_same_answers(small_model_file, photo_folder):
    model = load_model(str(small_model_file))
    photos = sorted(p for p in photo_folder.iterdir() if p.suffix != ".txt")
    one_by_one = [predict(p, top_k=3, model=model) for p in photos]
    for batch_size in (2, 5, 64):
        batched = predict(photos, top_k=3, model=model, batch_size=batch_size)
        assert [[label for label, _ in r] for r in batched] == [[label for label, _ in r] for r in one_by_one]
        np.testing.assert_allclose([[p for _, p in r] for r in batched], [[p for _, p in r] for r in one_by_one],
                                   rtol=1e-5)
    assert len({tuple(label for label, _ in r) for r in one_by_one}) > 1  # not one answer for all
    with pytest.raises(MixerError, match="batch_size must be a positive integer, got 0"):
        predict(photos, model=model, batch_size=0)
    with pytest.raises(MixerError, match="top_k must be a positive integer, got -3"):
        predict(photos, model=model, top_k=-3)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "numpy_mixer", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_takes_folders_and_batch_size(small_model_file, photo_folder):
    files = sorted(str(p) for p in photo_folder.iterdir() if p.suffix != ".txt")
    by_folder = run_cli("predict", photo_folder, "--weights", small_model_file, "--batch-size", 2, "--top-k", 2)
    by_files = run_cli("predict", *files, "--weights", small_model_file, "--batch-size", 1, "--top-k", 2)
    assert by_folder.returncode == 0, by_folder.stderr
    assert by_folder.stdout == by_files.stdout
    printed = [line for line in by_folder.stdout.splitlines() if not line.startswith(" ")]
    assert printed == files  # every image in the folder, sorted; notes.txt skipped
    assert by_folder.stderr == ""  # no progress bar when stderr is not a terminal
    bad = run_cli("predict", photo_folder, "--weights", small_model_file, "--batch-size", 0)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "numpy-mixer: error: --batch-size must be at least 1, got 0"]
    empty = photo_folder.parent / "empty"
    empty.mkdir(exist_ok=True)
    nothing = run_cli("predict", empty, "--weights", small_model_file)
    assert nothing.returncode == 1 and "folder has no image files" in nothing.stderr
    assert len(nothing.stderr.strip().splitlines()) == 1


def test_benchmark_tiny_prints_one_table():
    result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "bench.py"), "--tiny", "--markdown"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("|  | numpy_mixer | PyTorch | ONNX Runtime |"), result.stdout
    assert any(line.startswith("| batch 1: img/s") for line in table)
    assert any(line.startswith("| cold start") for line in table)
    assert any(line.startswith("| peak memory") for line in table)
    assert "GFLOP/image" in result.stdout and "roofline" in result.stdout

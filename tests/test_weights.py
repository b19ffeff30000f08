"""Loading checkpoints: every key and shape checked, pickles refused, the hub path offline."""
import json
import os
import struct
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

import numpy_mixer

from numpy_mixer import load_model
from numpy_mixer.checkpoint import config_for, random_state_dict, save_checkpoint
from numpy_mixer.errors import MixerError
from numpy_mixer.weights import read_safetensors
from .helpers import run_python

TAG = "mixer_b16_224.goog_in21k_ft_in1k"


def small_state(**changes):
    return random_state_dict(config_for("mixer_s32_224", depth=2, **changes), seed=3)


def load_error(tmp_path, state, name="bad.safetensors"):
    path = save_checkpoint(state, tmp_path / name)
    with pytest.raises(MixerError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_architecture_is_read_off_the_shapes(tmp_path):
    state = random_state_dict(config_for("mixer_b32_224", depth=3, num_classes=7), seed=1)
    model = load_model(save_checkpoint(state, tmp_path / "b32.safetensors"))
    c = model.config
    assert (c.patch_size, c.img_size, c.embed_dim, c.depth, c.tokens_dim, c.channels_dim, c.num_classes) == \
        (32, 224, 768, 3, 384, 3072, 7)
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)


def test_weights_are_memory_mapped_not_copied(tmp_path):
    path = save_checkpoint(small_state(), tmp_path / "m.safetensors")
    tensors = read_safetensors(path)
    assert all(isinstance(v, np.memmap) for v in tensors.values())
    assert len({id(v._mmap) for v in tensors.values()}) == 1  # views into one map of the file
    np.testing.assert_array_equal(tensors["head.bias"], small_state()["head.bias"])


def test_missing_extra_and_misshapen_tensors_are_named(tmp_path):
    state = small_state()
    del state["blocks.1.norm2.bias"]
    assert "missing tensor 'blocks.1.norm2.bias' (expected shape (512,))" in load_error(tmp_path, state)
    state = small_state()
    state["blocks.0.extra.weight"] = np.zeros(3, np.float32)
    assert "unexpected tensor 'blocks.0.extra.weight'" in load_error(tmp_path, state)
    state = small_state()
    state["blocks.1.mlp_channels.fc2.weight"] = np.zeros((512, 100), np.float32)
    message = load_error(tmp_path, state)
    assert "'blocks.1.mlp_channels.fc2.weight' has shape (512, 100), expected (512, 2048)" in message
    state = small_state()
    state["norm.weight"] = np.zeros(512, np.int32)
    assert "'norm.weight' has dtype I32" in load_error(tmp_path, state)
    state = {k: v for k, v in small_state().items() if not k.startswith("stem")}
    assert "missing tensor 'stem.proj.weight'" in load_error(tmp_path, state)


def test_errors_name_the_real_fault_not_what_follows_from_it(tmp_path):
    """A transposed weight says so; a missing head.weight or block is missing, not its neighbours unexpected."""
    state = small_state()
    state["head.weight"] = np.ascontiguousarray(state["head.weight"].T)  # (512, 1000)
    message = load_error(tmp_path, state)
    assert "'head.weight' has shape (512, 1000), expected (classes, 512)" in message and "transposed" in message
    for key in ("blocks.1.mlp_channels.fc2.weight", "blocks.0.mlp_channels.fc1.weight"):
        state = small_state()
        state[key] = np.ascontiguousarray(state[key].T)
        message = load_error(tmp_path, state)
        assert key in message and "transposed" in message, message
    state = small_state()
    state["blocks.0.mlp_tokens.fc1.weight"] = np.ascontiguousarray(state["blocks.0.mlp_tokens.fc1.weight"].T)
    assert "transposed" in load_error(tmp_path, state)  # (49, 256): 256 tokens would be square, 49 hidden is
    state = small_state()
    state["blocks.0.mlp_channels.fc2.weight"] = np.zeros((512, 100), np.float32)
    assert "transposed" not in load_error(tmp_path, state)  # only where the swap fits
    state = small_state()
    del state["head.weight"]
    assert "missing tensor 'head.weight' (the checkpoint has 'head.bias' of shape (1000,))" in load_error(tmp_path, state)
    state = random_state_dict(config_for("mixer_s32_224", depth=4), seed=3)
    for key in [k for k in state if k.startswith("blocks.1.")]:
        del state[key]
    message = load_error(tmp_path, state)
    assert "missing tensors 'blocks.1.*', though the checkpoint has 'blocks.2.*'" in message and "unexpected" not in message


def test_half_precision_checkpoints_load_as_float32(tmp_path):
    import torch
    from safetensors.torch import save_file

    state = small_state()
    path = tmp_path / "bf16.safetensors"
    save_file({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in state.items()}, str(path))
    model = load_model(path)
    assert model.dtype == np.float32
    np.testing.assert_allclose(model.params["head"]["weight"], state["head.weight"], rtol=1e-2)


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".pt", ".ckpt"])
def test_pickled_checkpoints_are_refused_unopened(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04would-be pickle")
    with pytest.raises(MixerError, match="refusing to load a pickled checkpoint .* convert it to .safetensors"):
        load_model(path)


def test_truncated_and_corrupt_files(tmp_path):
    good = save_checkpoint(small_state(), tmp_path / "good.safetensors").read_bytes()
    cases = {
        "truncated": (good[: len(good) // 2], "truncated or corrupt: the tensors take"),
        "tiny": (b"abc", "not a safetensors file"),
        "garbage": (os.urandom(4096), "not a safetensors file"),
        "badjson": (struct.pack("<Q", 10) + b"{not json}" + b"\0" * 64, "corrupt safetensors header"),
        "baddtype": (struct.pack("<Q", 64) + json.dumps({"x": {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]}})
                     .encode().ljust(64) + b"\0", "dtype I8"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(MixerError, match=message):
            load_model(path)


def test_unknown_names(tmp_path):
    with pytest.raises(MixerError, match="unknown model 'mixer_b99_224.nope'"):
        load_model("mixer_b99_224.nope")
    with pytest.raises(MixerError, match="mixer_s32_224 has no pretrained weights in timm - pass a local .*"
                                         "numpy-mixer random-checkpoint mixer_s32_224 mixer_s32_224.safetensors"):
        load_model("mixer_s32_224")
    with pytest.raises(MixerError, match="no such file"):
        load_model(tmp_path / "absent.safetensors")


def write_hub_cache(hf_home, repo_id, checkpoint):
    """The Hugging Face cache layout: blobs, a snapshot that links to them, refs/main naming the snapshot."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    blob = repo / "blobs" / ("0" * 64)
    os.symlink(checkpoint, blob)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    os.symlink(blob, snapshot / "model.safetensors")


def run_offline(code, hf_home):
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_hub_name_loads_from_the_cache_offline(tmp_path, make_checkpoint, rng):
    path, state = make_checkpoint("mixer_b16_224")
    write_hub_cache(tmp_path, f"timm/{TAG}", path)
    code = f"""
import numpy as np
from numpy_mixer import load_model
for name in ["{TAG}", "mixer_b16_224", "timm/{TAG}"]:
    m = load_model(name)
    assert m.pretrained_cfg["name"] == "{TAG}", m.pretrained_cfg
    assert m.pretrained_cfg["interpolation"] == "bicubic" and m.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert m.pretrained_cfg["labels"] == "imagenet-1k"
print(float(m.params["head"]["bias"][:5].sum()))
"""
    result = run_offline(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(float(state["head.bias"][:5].sum()), rel=1e-6)


def offline_load_error(hf_home):
    """The MixerError message of load_model(TAG) in a fresh offline process."""
    code = f"""
from numpy_mixer import load_model
from numpy_mixer.errors import MixerError
try:
    load_model("{TAG}")
except MixerError as e:
    print(e)
"""
    result = run_offline(code, hf_home)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_hub_offline_without_cache_says_how_to_pass_a_file(tmp_path):
    message = offline_load_error(tmp_path)
    assert f"cannot download timm/{TAG}" in message and "--weights FILE" in message


def test_hub_checkpoint_of_the_wrong_architecture_is_caught(tmp_path, make_checkpoint):
    path, _ = make_checkpoint("mixer_s32_224")
    write_hub_cache(tmp_path, f"timm/{TAG}", path)
    assert "download it again" in offline_load_error(tmp_path)


# ---- hostile files (issue 11): each refused with one line that names the file and the reason ----

def tiny_checkpoint(tmp_path, name="tiny.safetensors", **changes):
    """A valid checkpoint of a tiny Mixer (patch 8, 32px, 2 blocks of width 16): (path, bytes, header)."""
    state = random_state_dict(config_for("mixer_s32_224", patch_size=8, img_size=32, embed_dim=16, depth=2,
                                         tokens_dim=8, channels_dim=32, num_classes=5, **changes), seed=5)
    path = save_checkpoint(state, tmp_path / name)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return path, data, json.loads(data[8:8 + n])


def with_header(header, data_section, pad=True):
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data_section


def data_section(data):
    (n,) = struct.unpack("<Q", data[:8])
    return data[8 + n:]


def refuse(tmp_path, content, match, reader=load_model, name="bad.safetensors"):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else None
    with pytest.raises(MixerError, match=match) as info:
        reader(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and len(message) < 400, message
    return message


def safetensors_refuses(content):
    from safetensors.numpy import load
    with pytest.raises(Exception):
        load(content)


def test_header_size_cap_is_named_as_the_cap(tmp_path):
    from numpy_mixer.weights import MAX_HEADER_BYTES
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:  # a sparse 200 MB file whose header claims 200 MB
        f.write(struct.pack("<Q", 200_000_000))
        f.truncate(200_000_100)
    message = refuse(tmp_path, None, "over this reader's limit", name="big.safetensors")
    assert f"{MAX_HEADER_BYTES:,}" in message and "200,000,000" in message and "truncated" not in message


def test_json_bombs_are_refused(tmp_path):
    deep = b"[" * 100_000 + b"]" * 100_000
    refuse(tmp_path, struct.pack("<Q", len(deep)) + deep, "nested too deeply")
    _, data, header = tiny_checkpoint(tmp_path)
    huge_int = json.dumps(header).replace('"shape": [16]', '"shape": [' + "9" * 5000 + "]", 1).encode()
    refuse(tmp_path, struct.pack("<Q", len(huge_int)) + huge_int + data_section(data), "5000-digit integer")
    nan = json.dumps(header).replace('"shape": [16]', '"shape": [NaN]', 1).encode()
    refuse(tmp_path, struct.pack("<Q", len(nan)) + nan + data_section(data), "the number NaN")


def test_duplicate_keys_are_refused(tmp_path):
    """A duplicate key pointing at another tensor's data would load and change the answer."""
    _, data, header = tiny_checkpoint(tmp_path)
    text = json.dumps(header)
    other = json.dumps(header["norm.bias"])  # json.loads keeps the last: head.bias would read norm.bias's data
    dup = text[:-1] + ', "head.bias": ' + other + "}"
    refuse(tmp_path, struct.pack("<Q", len(dup)) + dup.encode() + data_section(data), "duplicate key 'head.bias'")


def test_offsets_must_be_contiguous_and_cover_the_data(tmp_path):
    _, data, header = tiny_checkpoint(tmp_path)
    body = data_section(data)
    a, b = header["norm.weight"]["data_offsets"], header["norm.bias"]["data_offsets"]
    assert a[0] > 0
    overlap = dict(header, **{"norm.weight": dict(header["norm.weight"], data_offsets=[a[0] - 4, a[1] - 4])})
    gap = {k: v for k, v in header.items() if k != "norm.bias"}
    gap["norm.bias"] = dict(header["norm.bias"], data_offsets=[len(body), len(body) + b[1] - b[0]])
    cases = [(with_header(overlap, body), "overlaps the tensor before it"),
             (with_header(gap, body + b"\0" * (b[1] - b[0])), "leaves a gap"),
             (with_header(header, body + b"\0" * 8), "corrupt: the tensors take"),
             (with_header(header, body[:-4]), "truncated or corrupt: the tensors take")]
    for content, match in cases:
        safetensors_refuses(content)  # the reference reader refuses each too
        refuse(tmp_path, content, match, reader=read_safetensors)


def test_strings_from_the_header_stay_on_one_line(tmp_path):
    """The thorough fuzzing profile found a dtype holding a newline printed as is (a two-line message)."""
    header = {"x": {"dtype": "F32\n; fine", "shape": [1], "data_offsets": [0, 4]}}
    refuse(tmp_path, with_header(header, b"\0" * 4), r"has dtype 'F32\\n; fine'", reader=read_safetensors)
    header = {"a\nb" * 100: {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]}}
    refuse(tmp_path, with_header(header, b"\0"), r"tensor 'a\\nba\\nb.*\.\.\. \(300 characters\) has dtype I8",
           reader=read_safetensors)


def test_shape_products_cannot_overflow(tmp_path):
    header = {"x": {"dtype": "F32", "shape": [2**32, 2**32, 2**32], "data_offsets": [0, 4]}}
    refuse(tmp_path, with_header(header, b"\0" * 4), "needs 316,912,650,057,057,350,374,175,801,344 bytes",
           reader=read_safetensors)  # np.prod(..., int64) would wrap to 0
    header = {"x": {"dtype": "F32", "shape": [0, 2**62], "data_offsets": [0, 0]}}  # empty, but NumPy cannot hold it
    refuse(tmp_path, with_header(header, b""), "too large for NumPy", reader=read_safetensors)


def test_non_finite_weights_are_refused_at_load_naming_the_tensor(tmp_path):
    for value in (np.nan, np.inf, -np.inf):
        state = small_state()
        state["blocks.1.mlp_tokens.fc2.weight"][3, 4] = value
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no RuntimeWarning from the check before the error
            message = load_error(tmp_path, state)
        assert "tensor 'blocks.1.mlp_tokens.fc2.weight' has 1 NaN or infinite values" in message
    state["blocks.1.mlp_tokens.fc2.weight"][3, :2] = np.inf, -np.inf  # inf - inf in the sum: no warning either
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "has 3 NaN or infinite values" in load_error(tmp_path, state)


def test_bogus_keys_fail_from_the_header_before_any_array(tmp_path, monkeypatch):
    """60,000 bogus keys (a 3 MB header): refused from the header alone, in well under a second."""
    import time
    import tracemalloc

    import numpy_mixer.weights as weights
    _, data, header = tiny_checkpoint(tmp_path)
    body = data_section(data)
    bogus = dict(header)
    for i in range(60_000):
        bogus[f"bogus.{i}"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    content = with_header(bogus, body)
    assert len(content) > 3_000_000

    def no_arrays(*args, **kwargs):
        raise AssertionError("an array was made before the key names were checked")

    monkeypatch.setattr(weights.np, "memmap", no_arrays)
    monkeypatch.setattr(weights.np, "zeros", no_arrays)
    start = time.perf_counter()
    message = refuse(tmp_path, content, "unexpected tensor 'bogus.0' with shape .* and 59,999 more")
    assert time.perf_counter() - start < 5
    tracemalloc.start()
    refuse(tmp_path, content, "unexpected tensor")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * len(content), peak  # the parsed header, and nothing built per expected key
    # 1.2 million keys make a header over the cap: refused before it is even read
    path = tmp_path / "million.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 84_000_000))
        f.truncate(84_000_008)
    refuse(tmp_path, None, "over this reader's limit", name="million.safetensors")
    assert message


def test_many_blocks_of_bogus_keys_stay_linear(tmp_path):
    """blocks.0.x ... blocks.49999.x: a depth of 50,000 must not build 600,000 expected keys."""
    import time
    _, data, header = tiny_checkpoint(tmp_path)
    bogus = dict(header)
    for i in range(50_000):
        bogus[f"blocks.{i}.x"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    start = time.perf_counter()
    refuse(tmp_path, with_header(bogus, data_section(data)), "missing tensor 'blocks.2.norm1.weight'")
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("changes, match", [
    (dict(in_chans=1), "a model of 1-channel images; numpy_mixer runs RGB"),
    (dict(patch_size=0, img_size=0), r"'stem.proj.weight' has shape \(16, 3, 0, 0\)"),
])
def test_weird_architectures_are_refused_at_load(tmp_path, changes, match):
    config = config_for("mixer_s32_224", patch_size=8, img_size=32, embed_dim=16, depth=1, tokens_dim=8,
                        channels_dim=32, num_classes=5)
    shapes = {k: v for k, v in expected_shapes_of(config, **changes).items()}
    state = {k: np.ones(s, np.float32) for k, s in shapes.items()}
    refuse(tmp_path, None, match, name=str(save_checkpoint(state, tmp_path / "weird.safetensors").name))


def expected_shapes_of(config, in_chans=None, patch_size=None, img_size=None):
    import dataclasses

    from numpy_mixer.weights import expected_shapes
    shapes = expected_shapes(config)
    changed = dataclasses.replace(config, **{k: v for k, v in dict(in_chans=in_chans, patch_size=patch_size).items()
                                             if v is not None})
    shapes["stem.proj.weight"] = (changed.embed_dim, changed.in_chans, changed.patch_size, changed.patch_size)
    return shapes


def test_headless_shapes_that_would_crash_indexing_are_refused(tmp_path):
    state = small_state()
    state["head.weight"] = np.zeros(5, np.float32)  # a vector: shape[0] was read as the class count
    assert "'head.weight' has shape (5,), expected a matrix" in load_error(tmp_path, state)


def test_special_files_get_the_right_message(tmp_path):
    os.mkdir(tmp_path / "dir.safetensors")
    os.symlink(tmp_path / "loop.safetensors", tmp_path / "loop.safetensors")
    # a folder is timm's local-dir layout (numpy_mixer.hub), whatever its name: it must hold config.json
    for path, match in [(tmp_path / "dir.safetensors", "no config.json in the folder"),
                        (tmp_path / "loop.safetensors", "symbolic link loop"),
                        ("/dev/zero", "is a character device, not a safetensors file")]:
        with pytest.raises(MixerError, match=match):
            load_model(path)


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    code = f"""
from numpy_mixer import load_model
from numpy_mixer.errors import MixerError
try:
    load_model({str(fifo)!r})
except MixerError as e:
    print(e)
"""
    result = run_python(code, timeout=60)  # the old reader blocked here forever
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{fifo}: is a FIFO (named pipe), not a safetensors file"


def test_unreadable_file_says_permission_denied(tmp_path):
    path, _, _ = tiny_checkpoint(tmp_path)
    os.chmod(path, 0)
    root = os.geteuid() == 0
    if root:  # root reads any file: become nobody for the call (the effective uid decides)
        os.seteuid(65534)
    try:
        with pytest.raises(MixerError, match="permission denied; make the safetensors file readable"):
            load_model(path)
    finally:
        if root:
            os.seteuid(0)


def test_one_file_descriptor_per_checkpoint(tmp_path):
    """An l16-sized checkpoint (294 tensors) loaded 30 times under a limit of 64 open files (macOS: 256)."""
    state = random_state_dict(config_for("mixer_l16_224", patch_size=8, img_size=32, embed_dim=8, tokens_dim=4,
                                         channels_dim=8, num_classes=3), seed=1)
    assert len(state) == 294
    path = save_checkpoint(state, tmp_path / "l16-keys.safetensors")
    code = f"""
import os, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from numpy_mixer import load_model
before = len(os.listdir("/proc/self/fd"))
models = [load_model({str(path)!r}) for _ in range(30)]
print(len(os.listdir("/proc/self/fd")) - before)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == 30  # one per model, not one per tensor


# ---- model argument checks ----

def test_model_argument_checks(tmp_path, make_checkpoint):
    import torch

    from .conftest import timm_model
    path, _, _ = tiny_checkpoint(tmp_path)
    model = load_model(path)
    x = np.zeros((2, 3, 32, 32), np.float32)
    assert model(x[:0]).shape == (0, 5) and model(x[:0]).dtype == np.float32  # an empty batch, as timm
    assert model(x[:0], fast=False).shape == (0, 5)
    s32, state = make_checkpoint("mixer_s32_224")
    with torch.no_grad():
        assert tuple(timm_model("mixer_s32_224", state)(torch.zeros(0, 3, 224, 224)).shape) == (0, 1000)
    cases = [(lambda: load_model(None), "load_model takes a timm model name or a path .* not NoneType"),
             (lambda: load_model(path, num_classes=-1), "num_classes must be a whole number from 0"),
             (lambda: load_model(path, num_classes=2.5), "num_classes must be a whole number from 0"),
             (lambda: load_model(path, num_classes=True), "num_classes must be a whole number from 0"),
             (lambda: load_model(path, num_classes=10**12), "from 0 \\(no head\\) to 1,000,000, not 1000000000000"),
             (lambda: model.reset_classifier(1_000_001), "to 1,000,000, not 1000001"),
             (lambda: model.astype(np.float16), r"astype\(float16\): a model runs in float32 or float64 only"),
             (lambda: model.forward_head(np.zeros((2, 16), np.float32)), r"forward_head takes tokens \[B, N, C\] "
              r"with C = 16 .*got shape \(2, 16\)"),
             (lambda: model(np.full((1, 3, 32, 32), np.nan, np.float32)), "has 3,072 NaN or infinite values"),
             (lambda: model(np.where(np.eye(32) > 0, np.inf, 0).astype(np.float32)[None, None].repeat(3, 1)),
              "has 96 NaN or infinite values"),
             (lambda: model.astype("foo"), r"astype\('foo'\): not a NumPy dtype"),
             (lambda: load_model("a\0b.safetensors"), "cannot contain a NUL character"),
             (lambda: model.forward_head(np.zeros((2, 4, 16), np.int64)), "forward_head takes float32 tokens"),
             (lambda: model.forward_head(np.full((2, 4, 16), np.nan, np.float32)), "have 128 NaN or infinite"),
             (lambda: model.forward_head(np.zeros((2, 0, 16), np.float32)), "no tokens to pool"),
             (lambda: model.forward_intermediates(x, indices="a"), "indices='a': pass None"),
             (lambda: model.forward_intermediates(x, indices=[0.5]), r"indices=\[0.5\]: pass None"),
             (lambda: model.forward_intermediates(x, indices=True), "indices=True: pass None"),
             (lambda: numpy_mixer.load_labels("nope"), "unknown label set 'nope'"),
             (lambda: numpy_mixer.load_labels(["x"]), r"unknown label set \['x'\]")]
    for fast in (True, False):  # finite input that overflows float32 on the way: one line, never NaN logits
        cases.append((lambda fast=fast: model(np.full((1, 3, 32, 32), 1e38, np.float32), fast=fast),
                      r"the forward pass overflowed float32 \([0-9,]+ NaN or infinite values from an input of "
                      r"magnitude up to 1e\+38\)"))
    cases.append((lambda: model.forward_intermediates(np.full((1, 3, 32, 32), 1e38, np.float32)), "overflowed"))
    for call, match in cases:
        with pytest.raises(MixerError, match=match) as info:
            call()
        assert "\n" not in str(info.value)
    assert load_model(path, num_classes=np.int64(3)).num_classes == 3
    assert model.astype(np.float64).dtype == np.float64
    tokens = model.forward_features(np.ones((2, 3, 32, 32), np.float32))
    assert np.array_equal(model.forward_head(tokens[:, :3]), model.forward_head(tokens[:, :3].astype(np.float64)))
    assert model.forward_intermediates(x, indices=np.array([0, -1]), intermediates_only=True)[0].shape[0] == 2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return load_model(tiny_checkpoint(tmp_path_factory.mktemp("tiny"))[0])  # 32 x 32 input, 5 classes


@st.composite
def model_inputs(draw):
    """(x, description): what a caller might hand to model(x): right and wrong shapes (channels-last, no batch
    axis, another size), any dtype, NaN and infinities, and broadcast views of up to 10^12 images in a few bytes."""
    dtype = draw(st.sampled_from(["float32"] * 4 + ["float64", "float16", "uint8", "int64", "bool", "object"]))
    kind = draw(st.sampled_from(["right", "channels_last", "no_batch", "other", "view"]))
    B = draw(st.integers(0, 3))
    shape = {"right": (B, 3, 32, 32), "channels_last": (B, 32, 32, 3), "no_batch": (3, 32, 32),
             "view": (draw(st.sampled_from([10**3, 10**7, 10**12])), 3, 32, 32)}.get(kind) or \
        tuple(draw(st.lists(st.integers(0, 40), max_size=5)))
    if kind == "view":
        return np.broadcast_to(np.zeros((1, 3, 32, 32), dtype), shape), f"{dtype} view {shape}"
    x = np.random.default_rng(draw(st.integers(0, 99))).standard_normal(shape).astype(dtype)
    if x.size and x.dtype.kind == "f" and draw(st.booleans()):
        x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return x, f"{dtype} {kind} {shape}"


@settings(max_examples=2 * settings().max_examples)
@given(case=model_inputs())
@example(case=(np.broadcast_to(np.zeros((1, 3, 32, 32), np.float32), (10**12, 3, 32, 32)), "view of 10^12"))
@example(case=(np.ones((2, 3, 32, 32), np.float32), "two images"))
def test_any_input_gives_logits_or_one_line_that_says_what_to_do(tiny_model, case):
    x, what = case
    start = time.perf_counter()
    try:
        logits = tiny_model(x)
    except MixerError as e:
        message = str(e)
        assert "\n" not in message and " - " in message, (what, message)  # one line, with what to do
        event(message.split(" - ")[-1][:40])
    else:
        assert logits.shape == (len(x), 5) and logits.dtype == np.float32 and np.isfinite(logits).all(), what
        event("logits")
    assert time.perf_counter() - start < 30, what  # no hang: a view of 10^12 images is refused at once


def test_a_checkpoint_changed_in_place_is_caught_before_it_is_read(tmp_path):
    """Truncating a mapped file kills the process (SIGBUS) when a lost page is read: the guard runs first."""
    path, data, _ = tiny_checkpoint(tmp_path)
    replaced = tmp_path / "replaced.safetensors"
    replaced.write_bytes(data)
    code = f"""
import os, numpy as np
from numpy_mixer import load_model
from numpy_mixer.errors import MixerError
x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
model = load_model({str(path)!r})
os.truncate({str(path)!r}, 100)
try:
    model(x)
    print("no error")
except MixerError as e:
    print(e)
other = load_model({str(replaced)!r})
before = other(x)
tmp = {str(replaced)!r} + ".new"
open(tmp, "wb").write(b"new contents")
os.replace(tmp, {str(replaced)!r})  # replaced by a rename, as downloads do: the mapping keeps the old file
assert np.array_equal(other(x), before)
print("rename ok")
"""
    result = run_python(code)
    assert result.returncode == 0, (result.returncode, result.stderr)  # -7 would be SIGBUS
    first, second = result.stdout.strip().splitlines()
    assert first == (f"{path}: the checkpoint was changed on disk after it was loaded (it is memory-mapped, so "
                     "its weights would change too); load the model again")
    assert second == "rename ok"


def test_a_link_that_leads_nowhere_is_named_as_such_not_as_an_unknown_model(tmp_path):
    loop, dangling = tmp_path / "loop.safetensors", tmp_path / "gone"
    os.symlink(loop, loop)
    os.symlink(tmp_path / "nowhere.safetensors", dangling)
    for path, match in ((loop, "symbolic link loop"), (dangling, "no such file - check the path")):
        with pytest.raises(MixerError, match=match) as info:
            load_model(path)
        assert "unknown model" not in str(info.value) and "\n" not in str(info.value)

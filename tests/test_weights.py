"""Loading checkpoints: every key and shape checked, pickles refused, the hub path offline."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from numpy_mixer import load_model
from numpy_mixer.checkpoint import config_for, random_state_dict, save_checkpoint
from numpy_mixer.errors import MixerError
from numpy_mixer.weights import read_safetensors

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
        "truncated": (good[: len(good) // 2], "truncated: the tensors take"),
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
    with pytest.raises(MixerError, match="mixer_s32_224 has no pretrained weights in timm; pass a local"):
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

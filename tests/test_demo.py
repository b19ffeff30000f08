"""numpy_mixer.demo: which weights the notebooks get (NUMPY_MIXER_WEIGHTS), and the demo photos."""
import os

import numpy as np
import pytest
from huggingface_hub import constants

from numpy_mixer import demo
from numpy_mixer.checkpoint import config_for, random_state_dict
from numpy_mixer.errors import MixerError

SMALL = "mixer_s32_224"  # no pretrained tag in timm: always random, and quick to generate


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh random-weights cache, an empty Hugging Face cache, offline, and no NUMPY_MIXER_WEIGHTS."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(demo.ENV_VAR, raising=False)


def test_random_weights_are_the_seeded_checkpoint_and_say_so(monkeypatch):
    monkeypatch.setenv(demo.ENV_VAR, "random")
    model, real = demo.demo_model(SMALL, seed=3)
    assert real is False
    assert "RANDOM" in demo.weights_note(model, real)
    want = random_state_dict(config_for(SMALL), seed=3)
    got = model.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert model.dtype == np.float32


def test_random_checkpoint_is_written_once_and_reused():
    first = demo.random_checkpoint(SMALL, seed=1)
    stamp = os.stat(first).st_mtime_ns
    assert demo.random_checkpoint(SMALL, seed=1) == first
    assert os.stat(first).st_mtime_ns == stamp
    assert demo.random_checkpoint(SMALL, seed=2) != first
    assert not [p for p in first.parent.iterdir() if p.suffix == ".tmp"]


def test_auto_offline_without_cache_falls_back_to_random_with_the_tags_preprocessing():
    model, real = demo.demo_model("mixer_b16_224.miil_in21k_ft_in1k", num_classes=0)
    assert real is False
    assert model.pretrained_cfg["mean"] == (0.0, 0.0, 0.0)  # miil's, not Google's
    assert model.num_classes == 0
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert model(x).shape == (1, 768)


def test_auto_uses_the_hugging_face_cache_when_the_file_is_there(tmp_path, make_checkpoint):
    tag = "mixer_b16_224.goog_in21k_ft_in1k"
    path, state = make_checkpoint("mixer_b16_224")
    repo = tmp_path / "hf" / f"models--timm--{tag}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model.safetensors").symlink_to(path)
    model, real = demo.demo_model(tag)
    assert real is True
    assert model.pretrained_cfg["name"] == tag
    np.testing.assert_array_equal(model.params["head"]["weight"], state["head.weight"])
    assert "Pretrained" in demo.weights_note(model, real)


def test_pretrained_requested_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(demo.ENV_VAR, "pretrained")
    with pytest.raises(MixerError, match="cannot download"):
        demo.demo_model()
    with pytest.raises(MixerError, match="no pretrained weights"):
        demo.demo_model(SMALL)


def test_a_file_is_real_unless_it_is_one_of_our_random_checkpoints(monkeypatch, make_checkpoint):
    path, _ = make_checkpoint(SMALL)
    monkeypatch.setenv(demo.ENV_VAR, str(path))
    assert demo.demo_model()[1] is True  # the file decides the architecture, not the name
    monkeypatch.setenv(demo.ENV_VAR, str(demo.random_checkpoint(SMALL)))
    model, real = demo.demo_model()
    assert real is False and model.config.patch_size == 32


def test_a_bad_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(demo.ENV_VAR, "/no/such/file.safetensors")
    with pytest.raises(MixerError, match="NUMPY_MIXER_WEIGHTS="):
        demo.demo_model()


def test_demo_photos_are_rgb_uint8_and_preprocess():
    photos = demo.demo_photos(["chelsea", "rocket"])
    assert list(photos) == ["chelsea", "rocket"]
    for img in photos.values():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.std() > 10
    model, _ = demo.demo_model(SMALL)
    assert model.preprocess(photos["chelsea"]).shape == (3, 224, 224)
    with pytest.raises(MixerError, match="unknown demo photo"):
        demo.demo_photos(["dog"])

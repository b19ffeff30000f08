"""The numpy-mixer command through a subprocess: real photos, JSON, and every bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

from numpy_mixer import load_labels, load_model, predict
from numpy_mixer.checkpoint import config_for, random_state_dict, save_checkpoint


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "numpy_mixer", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, **(env or {})))


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("numpy-mixer: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ["chelsea", "coffee", "rocket"]:
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(skimage.data, name)()).save(path, quality=95)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def weights(make_checkpoint):
    return make_checkpoint("mixer_s32_224")[0]


def test_predict_prints_top_k_for_each_photo(photos, weights):
    result = run("predict", *photos[:2], "--weights", weights, "--top-k", 3)
    assert result.returncode == 0, result.stderr
    expected = predict(photos[:2], top_k=3, model=load_model(weights))
    lines = result.stdout.splitlines()
    assert lines[0] == str(photos[0]) and lines[4] == str(photos[1])
    for top, block in zip(expected, [lines[1:4], lines[5:8]]):
        for (label, prob), line in zip(top, block):
            assert line.strip() == f"{prob:.2%}  {label}"


def test_predict_json(photos, weights):
    result = run("predict", photos[2], "--weights", weights, "--json")
    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)
    assert entry["image"] == str(photos[2]) and len(entry["predictions"]) == 5
    probs = [p["probability"] for p in entry["predictions"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    expected = predict(str(photos[2]), model=load_model(weights))
    assert [p["label"] for p in entry["predictions"]] == [label for label, _ in expected]
    assert probs == pytest.approx([prob for _, prob in expected], rel=1e-6)


def test_predict_api_returns_sorted_labels_and_probabilities(photos, weights):
    model = load_model(weights)
    top = predict(photos[0], top_k=5, model=model)
    assert len(top) == 5 and all(isinstance(label, str) for label, _ in top)
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True)
    logits = model(model.preprocess(photos[0])[None])[0]
    assert top[0][0] == load_labels()[int(np.argmax(logits))]
    one_by_one = [predict(p, model=model) for p in photos]
    batched = predict(photos, model=model)
    for single, batch in zip(one_by_one, batched):  # equal up to float32 summation order in the batch
        assert [label for label, _ in single] == [label for label, _ in batch]
        assert [p for _, p in single] == pytest.approx([p for _, p in batch], rel=1e-4)


def test_bad_inputs_each_give_one_line(tmp_path, photos, weights):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    broken_jpeg = tmp_path / "broken.jpg"
    broken_jpeg.write_bytes(photos[0].read_bytes()[:3000])
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(weights.read_bytes()[:100_000])
    misshapen = tmp_path / "misshapen.safetensors"
    state = random_state_dict(config_for("mixer_s32_224", depth=1))
    state["blocks.0.mlp_tokens.fc2.weight"] = state["blocks.0.mlp_tokens.fc2.weight"][:, :100]
    save_checkpoint(state, misshapen)
    headless = tmp_path / "headless.safetensors"
    save_checkpoint(random_state_dict(config_for("mixer_s32_224", depth=1, num_classes=0)), headless)
    no_images = tmp_path / "docs"
    no_images.mkdir()
    (no_images / "readme.pdf").write_bytes(b"%PDF-1.4")  # Pillow can write PDF, not read it
    pickled = tmp_path / "model.pth"
    pickled.write_bytes(b"\x80\x04")
    empty_cache = tmp_path / "hf"
    cases = [
        (("predict", tmp_path / "missing.jpg", "--weights", weights), ["missing.jpg", "no such file"]),
        (("predict", text, "--weights", weights), ["notes.txt", "not an image"]),
        (("predict", broken_jpeg, "--weights", weights), ["broken.jpg", "cannot read the image"]),
        (("predict", photos[0], "--weights", tmp_path / "nope.safetensors"), ["nope.safetensors", "no such file"]),
        (("predict", photos[0], "--weights", truncated), ["truncated.safetensors", "truncated or corrupt"]),
        (("predict", photos[0], "--weights", misshapen),
         ["'blocks.0.mlp_tokens.fc2.weight' has shape (49, 100), expected (49, 256)"]),
        (("predict", photos[0], "--weights", pickled), ["model.pth", "pickled checkpoint"]),
        (("predict", photos[0], "--model", "mixer_b16_224.nope"), ["unknown model 'mixer_b16_224.nope'"]),
        (("predict", photos[0], "--top-k", 0, "--weights", weights), ["--top-k"]),
        (("predict", photos[0], "--weights", headless), ["headless.safetensors", "no classifier head"]),
        (("predict", photos[0], "--weights", "digits"), ["digits: no such file", "use --model"]),
        (("predict", no_images, "--weights", weights), ["docs: folder has no image files"]),
    ]
    for args, fragments in cases:
        assert_one_line_error(run(*args), *fragments)
    offline = run("predict", photos[0], env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(empty_cache)})
    assert_one_line_error(offline, "cannot download timm/mixer_b16_224.goog_in21k_ft_in1k", "--weights FILE")
    # a mistyped image is named before any attempt to fetch the model
    typo = run("predict", tmp_path / "typo.jpg", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(empty_cache)})
    assert_one_line_error(typo, "typo.jpg: no such file")


def test_console_script_is_installed():
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "numpy-mixer"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "predict" in result.stdout

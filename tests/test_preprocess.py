"""Preprocessing against timm's eval transform, on scikit-image's real photos: equal to the bit."""
import numpy as np
import pytest
import skimage.data
import timm
from PIL import Image

from numpy_mixer import preprocess
from numpy_mixer.errors import MixerError
from numpy_mixer.weights import PRETRAINED

GOOG = PRETRAINED["mixer_b16_224.goog_in21k_ft_in1k"]
MIIL = PRETRAINED["mixer_b16_224.miil_in21k_ft_in1k"]


def timm_transform(tag):
    model = timm.create_model(tag, pretrained=False)
    return timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)


@pytest.fixture(scope="module")
def transforms():
    return {"goog": timm_transform("mixer_b16_224.goog_in21k_ft_in1k"),
            "miil": timm_transform("mixer_b16_224.miil_in21k_ft_in1k")}


def photo(name, size=None):
    img = Image.fromarray(getattr(skimage.data, name)())
    return img if size is None else img.resize(size, Image.Resampling.LANCZOS)


# real photos at their own sizes and at awkward ones: odd, tall, wide, smaller than the crop
PHOTOS = [("chelsea", None), ("coffee", None), ("astronaut", None), ("rocket", None), ("camera", None),
          ("chelsea", (97, 333)), ("coffee", (1001, 257)), ("astronaut", (224, 224)), ("rocket", (120, 90)),
          ("hubble_deep_field", None)]


@pytest.mark.parametrize("name, size", PHOTOS)
@pytest.mark.parametrize("cfg_name, cfg", [("goog", GOOG), ("miil", MIIL)])
def test_equal_to_timm_eval_transform(transforms, name, size, cfg_name, cfg):
    img = photo(name, size)
    ours = preprocess(img, cfg)
    theirs = transforms[cfg_name](img.convert("RGB")).numpy()
    assert ours.dtype == np.float32 and ours.shape == (3, 224, 224)
    assert ours.std() > 0.05  # a real picture, not a blank
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "PA", "CMYK", "YCbCr", "1", "I", "F", "HSV"])
def test_every_pillow_mode_equals_timm_on_its_rgb_conversion(transforms, mode):
    img = photo("coffee", (333, 250))
    img = img.convert(mode) if mode != "PA" else img.convert("RGBA").convert("PA")
    ours = preprocess(img, GOOG)
    assert ours.dtype == np.float32 and ours.shape == (3, 224, 224) and ours.std() > 0.05
    np.testing.assert_array_equal(ours, transforms["goog"](img.convert("RGB")).numpy())


def test_16_bit_grayscale_is_scaled_not_clipped(transforms):
    gray8 = np.asarray(photo("camera", (300, 260)))
    img16 = Image.fromarray(gray8.astype(np.uint16) * 257)  # the same picture in 16 bits
    assert img16.mode.startswith("I;16")
    np.testing.assert_array_equal(preprocess(img16, GOOG), transforms["goog"](Image.fromarray(gray8).convert("RGB")).numpy())


def test_path_array_and_pil_inputs_agree(tmp_path, transforms):
    img = photo("chelsea")
    path = tmp_path / "chelsea.png"
    img.save(path)
    colour = transforms["goog"](img).numpy()
    gray = np.asarray(img.convert("L"))
    gray_expected = transforms["goog"](img.convert("L").convert("RGB")).numpy()
    for source, expected in [(path, colour), (str(path), colour), (img, colour), (np.asarray(img), colour),
                             (np.dstack([np.asarray(img), np.full(gray.shape, 255, np.uint8)]), colour),
                             (gray, gray_expected), (gray[:, :, None], gray_expected)]:
        np.testing.assert_array_equal(preprocess(source, GOOG), expected)


def test_bad_inputs_raise_one_clear_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    truncated = tmp_path / "half.jpg"
    photo("chelsea").save(tmp_path / "full.jpg")
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:2000])
    cases = [(tmp_path / "missing.jpg", "no such file"), (text, "not an image"), (tmp_path, "directory"),
             (truncated, "cannot read the image"), (np.zeros((4, 4, 3), np.float32), "uint8"),
             (np.zeros((4, 4, 2), np.uint8), "HxWx3"), (42, "cannot read an image from int")]
    for source, message in cases:
        with pytest.raises(MixerError, match=message) as info:
            preprocess(source)
        assert "\n" not in str(info.value)

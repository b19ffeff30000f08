"""Preprocessing against timm's eval transform, on scikit-image's real photos: equal to the bit."""
import os

import numpy as np
import pytest
import skimage.data
import timm
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from numpy_mixer import preprocess
from numpy_mixer.errors import MixerError
from numpy_mixer.weights import PRETRAINED
from .helpers import run_python, serve

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


SMALL = photo("chelsea", (40, 30))


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


@pytest.mark.parametrize("cfg, img_size, match", [
    ({"interpolation": "foo"}, 224, "interpolation 'foo'; expected one of bicubic"),
    ({"crop_pct": 0}, 224, "crop_pct 0; expected a number from 0.1 up"),
    ({"crop_pct": 1e-9}, 224, "crop_pct 1e-09"),  # was a nonsense aspect-ratio error about the image
    ({"crop_pct": float("inf")}, 224, "crop_pct inf"),
    ({"crop_pct": 300}, 224, "crop_pct 300 would resize the image to 0 pixels"),
    ({"crop_pct": "0.9"}, 224, "crop_pct '0.9'"),
    ({"std": (0, 0, 0)}, 224, r"std \(0, 0, 0\); expected three numbers, one per RGB channel, above 0"),
    ({"std": (0.5, float("nan"), 0.5)}, 224, "std"),
    ({"mean": (0, 0)}, 224, r"mean \(0, 0\); expected three numbers"),
    ({"mean": "abc"}, 224, "mean 'abc'; expected three numbers"),
    ({"input_size": 224}, 224, "input_size 224; expected"),
    ("abc", 224, "a dict .* or None, not str"),
    (None, 0, "img_size 0; expected a whole number of pixels above 0"),
    (None, 2.5, "img_size 2.5"),
])
def test_bad_preprocessing_settings_are_one_line_errors_naming_them(cfg, img_size, match):
    """(And only bad ones: see test_settings_timm_takes_are_taken.)"""
    with pytest.raises(MixerError, match=match) as info:
        preprocess(photo("chelsea"), cfg, img_size)
    assert "\n" not in str(info.value) and str(info.value).startswith("preprocess: ")


@pytest.mark.parametrize("cfg", [
    dict(crop_pct=1.15, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3),  # past 1: a crop with padding
    dict(crop_pct=np.float32(0.875), interpolation="bilinear", mean=np.array([0.485, 0.456, 0.406]),
         std=[np.float32(0.229), 0.224, 0.225]),
])
def test_settings_timm_takes_are_taken(cfg):
    """NumPy numbers and arrays, and crop_pct above 1, give timm's transform to the bit."""
    img = photo("chelsea", (97, 333))
    theirs = timm.data.create_transform(input_size=(3, 224, 224), is_training=False, **{
        k: (tuple(float(v) for v in cfg[k]) if k in ("mean", "std") else cfg[k]) for k in cfg})
    ours = preprocess(img, dict(cfg, input_size=(3, np.int64(224), 224)))
    np.testing.assert_array_equal(ours, theirs(img).numpy())


@settings(max_examples=settings().max_examples, deadline=None)
@given(cfg=st.dictionaries(st.sampled_from(["mean", "std", "interpolation", "crop_pct", "input_size"]), st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["bicubic", "bilinear", "nearest"]),
    st.lists(st.one_of(st.integers(-2, 300), st.floats(-2, 2), st.text(max_size=2)), max_size=4))))
def test_any_preprocessing_settings_give_a_finite_image_or_one_line_error(cfg):
    """Whatever the settings dict holds: a finite [3, S, S] float32 array, or a one-line MixerError."""
    try:
        x = preprocess(SMALL, cfg)
    except MixerError as e:
        assert "\n" not in str(e)
        return
    assert x.dtype == np.float32 and x.ndim == 3 and x.shape[0] == 3 and np.isfinite(x).all()


# ---- hostile images (issue 11) ----

def png_declaring(width, height):
    """A PNG header that declares width x height RGB pixels (no pixel data: opening it reads the header only)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def one_line_error(source, match):
    with pytest.raises(MixerError, match=match) as info:
        preprocess(source, GOOG)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    huge, large = tmp_path / "huge.png", tmp_path / "large.png"
    huge.write_bytes(png_declaring(50_000, 50_000))  # Pillow itself raises DecompressionBombError (not an OSError)
    large.write_bytes(png_declaring(10_000, 10_000))  # past the limit, under twice it: Pillow only warns
    assert str(huge) in one_line_error(huge, r"declares more than twice 89,478,485 pixels, Pillow's decompression")
    assert str(large) in one_line_error(large, r"10000x10000 = 100,000,000 pixels, over Pillow's decompression-bomb "
                                               r"limit of 89,478,485 \(PIL.Image.MAX_IMAGE_PIXELS\)")


def test_images_without_pixels_closed_or_truncated(tmp_path):
    one_line_error(np.zeros((0, 0, 3), np.uint8), r"image array has shape \(0, 0, 3\): no pixels")
    one_line_error(np.zeros((5, 0), np.uint8), r"image array has shape \(5, 0\): no pixels")
    one_line_error(Image.new("RGB", (0, 0)), "the PIL image: the image is 0x0, it has no pixels")
    closed = photo("coffee", (40, 30))
    closed.close()
    one_line_error(closed, r"the PIL image cannot be read \(Operation on closed image\): was it closed")
    photo("chelsea").save(tmp_path / "full.jpg")
    (tmp_path / "half.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:3000])
    lazy = Image.open(tmp_path / "half.jpg")  # opened lazily: the pixels are read by preprocess
    one_line_error(lazy, r"the PIL image cannot be read \(image file is truncated")
    empty = tmp_path / "empty.png"
    empty.write_bytes(png_declaring(0, 0))
    one_line_error(empty, "empty.png: (not an image Pillow can read|the image is 0x0)")


def test_special_files_get_the_right_message(tmp_path):
    os.mkdir(tmp_path / "dir.jpg")
    os.symlink(tmp_path / "loop.jpg", tmp_path / "loop.jpg")
    for path, match in [(tmp_path / "dir.jpg", "dir.jpg: is a directory, not an image"),
                        (tmp_path / "loop.jpg", "loop.jpg: symbolic link loop"),
                        ("/dev/zero", "/dev/zero: is a character device, not an image")]:
        one_line_error(path, match)


def test_unreadable_image_says_permission_denied(tmp_path):
    path = tmp_path / "secret.png"
    photo("coffee", (40, 30)).save(path)
    os.chmod(path, 0)
    root = os.geteuid() == 0
    if root:  # root reads any file: become nobody for the call (the effective uid decides)
        os.seteuid(65534)
    try:
        one_line_error(path, "secret.png: permission denied; make the image readable")
    finally:
        if root:
            os.seteuid(0)


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    result = run_python(f"""
from numpy_mixer import preprocess
from numpy_mixer.errors import MixerError
try:
    preprocess({str(fifo)!r})
except MixerError as e:
    print(e)
""", timeout=60)  # Image.open on a FIFO blocked forever
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{fifo}: is a FIFO (named pipe), not an image"


def test_thin_images_are_refused_in_bounded_memory_and_time(tmp_path):
    """A 1.3 KB 3x65000 PNG took over 4 GB; 1x10000, 2.7 GB and 12 s. Now: a clear error, in a fresh process."""
    paths = []
    for w, h in [(3, 65000), (10000, 1)]:
        path = tmp_path / f"thin-{w}x{h}.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    result = run_python(f"""
import time
from numpy_mixer import preprocess
from numpy_mixer.errors import MixerError
start = time.perf_counter()
for path in {paths!r}:
    try:
        preprocess(path)
    except MixerError as e:
        print(e)
# the peak resident memory of this process (VmHWM: ru_maxrss would include pytest's, inherited across exec)
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
print(time.perf_counter() - start, int(peak) // 1024)
""")
    assert result.returncode == 0, result.stderr
    *messages, figures = result.stdout.strip().splitlines()
    seconds, peak_mib = float(figures.split()[0]), int(figures.split()[1])
    assert messages == [
        f"{paths[0]}: 3x65000 pixels, an aspect ratio of 21,667:1; timm's transform would resize it to 256x5546666 "
        "before the crop. Crop or pad it to at most 256:1 (256x65536 after the resize)",
        f"{paths[1]}: 10000x1 pixels, an aspect ratio of 10,000:1; timm's transform would resize it to 2560000x256 "
        "before the crop. Crop or pad it to at most 256:1 (256x65536 after the resize)"]
    assert seconds < 5 and peak_mib < 300, (seconds, peak_mib)


@pytest.mark.parametrize("size", [(1, 256), (256, 1), (3, 700)])
def test_the_thinnest_accepted_images_equal_timm(transforms, size):
    """At the limit (256:1) the whole image is still resized, exactly as timm does."""
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8))
    for cfg_name, cfg in [("goog", GOOG), ("miil", MIIL)]:
        np.testing.assert_array_equal(preprocess(img, cfg), transforms[cfg_name](img).numpy())


def test_images_by_url_get_the_same_checks_before_decoding_as_files(tmp_path):
    """The bytes of a URL are opened as a file is: a declared bomb or a thin strip is refused, not decoded."""
    bodies = {"/large.png": png_declaring(10_000, 10_000), "/thin.png": png_declaring(3, 65_000)}
    with serve(bodies) as base:
        for name, words in [("large.png", r"10000x10000 = 100,000,000 pixels, over Pillow's decompression-bomb limit"),
                            ("thin.png", r"3x65000 pixels, an aspect ratio of 21,667:1")]:
            (tmp_path / name).write_bytes(bodies["/" + name])
            as_file = one_line_error(tmp_path / name, words)
            as_url = one_line_error(f"{base}/{name}", words)
            assert as_url == as_file.replace(str(tmp_path), base)


@pytest.mark.parametrize("error", [ValueError("Decompressed Data Too Large\nin a text chunk"), OSError(), EOFError("")])
def test_read_or_error_turns_a_stray_decoder_error_into_one_line_naming_the_image(error):
    """predict's and embed's reader: an error that load_image's own checks let through (here raised by
    the model's preprocess itself) comes back as one MixerError line naming the image, never raised."""
    from numpy_mixer.preprocess import read_or_error

    class Model:
        def preprocess(self, img):
            raise error

    result = read_or_error(Model(), "photo.png")
    assert isinstance(result, MixerError)
    text = str(result)
    assert "\n" not in text and text.startswith("photo.png: cannot read the image (") and "check the file" in text
    assert read_or_error(Model(), np.zeros((2, 2, 3), np.uint8)).args[0].startswith("a ndarray: ")

"""Fuzzing preprocessing: random sizes (1x1 to extreme aspect ratios), every Pillow mode, encoded and damaged files.

The property, for every image hypothesis makes:
    preprocess raises MixerError, or returns exactly timm's eval transform of the same image
    (Image.open(f).convert("RGB"), as timm's scripts read it); never another exception;
    and its peak memory stays bounded (the resize before the crop is capped).
A MixerError for an image timm accepts is allowed only for the documented limits (aspect ratio
past 256:1, Pillow's decompression-bomb limit). 16-bit grayscale is compared after our documented
scaling to 8 bits (Pillow's own conversion clips it). Case counts scale with the hypothesis profile.
"""
import io
import os

import numpy as np
import pytest
import timm
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from numpy_mixer import preprocess
from numpy_mixer.errors import MixerError
from numpy_mixer.preprocess import MAX_RESIZED_PIXELS, to_rgb

# mode -> bytes per pixel of Image.frombytes' raw data ("1" packs 8 pixels a byte)
MODES = {"1": None, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4,
         "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4, "I;16": 2, "I;16L": 2, "I;16B": 2}
FORMATS = ["PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "PPM"]
GOOG = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875)
CONFIGS = [dict(GOOG, interpolation=i) for i in ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")]
CONFIGS.append(dict(mean=(0.7,) * 3, std=(0.32,) * 3, interpolation="bilinear", crop_pct=1.0, input_size=(3, 16, 16)))
MIB = 1024 * 1024


def timm_transform(cfg):
    return timm.data.create_transform(input_size=cfg.get("input_size", (3, 224, 224)),
                                      interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"],
                                      crop_pct=cfg["crop_pct"], is_training=False)


TRANSFORMS = [timm_transform(cfg) for cfg in CONFIGS]


def memory_kib(field):
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1])


def reset_peak_memory():
    """Start a new VmHWM measurement (Linux: writing 5 to clear_refs resets the peak)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


sizes = st.one_of(
    st.tuples(st.integers(1, 300), st.integers(1, 300)),  # ordinary and small
    st.tuples(st.integers(1, 4), st.integers(200, 70_000)),  # thin: both sides of the 256:1 limit
    st.tuples(st.integers(200, 70_000), st.integers(1, 4)),
    st.sampled_from([(1, 1), (1, 256), (256, 1), (2, 512), (1, 257), (3, 769), (224, 224), (256, 256)]))


@st.composite
def images(draw):
    """(source passed to preprocess, what timm would read or None if it cannot, description)."""
    w, h = draw(sizes)
    source = draw(st.sampled_from(["pil", "array", "file", "file", "damaged_file"]))
    event(f"source: {source}")
    mode = draw(st.sampled_from(["L", "RGB", "RGBA"] if source == "array" else sorted(MODES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    per_pixel = MODES[mode]
    nbytes = (w + 7) // 8 * h if per_pixel is None else w * h * per_pixel
    raw = rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    if draw(st.booleans()):  # smooth pictures too, not only noise (resampling ringing, JPEG)
        raw = bytes(sorted(raw)) if draw(st.booleans()) else bytes(nbytes)
    img = Image.frombytes(mode, (w, h), raw)
    if source == "pil":
        return img, img, f"{mode} {w}x{h} PIL"
    if source == "array":
        return np.asarray(img), img, f"{mode} {w}x{h} array"
    data = None
    for fmt in [draw(st.sampled_from(FORMATS)), "TIFF", "PNG"]:  # the drawn format, else one that holds the mode
        buffer = io.BytesIO()
        try:
            img.save(buffer, fmt)
            data = buffer.getvalue()
            break
        except (OSError, ValueError, KeyError, TypeError, OverflowError):  # a mode or size it cannot hold
            continue
    assume(data is not None)
    if source == "damaged_file":
        data = bytearray(data)
        if draw(st.booleans()):
            data = data[:draw(st.integers(0, len(data) - 1))]
        else:
            for _ in range(draw(st.integers(1, 4))):
                data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        data = bytes(data)
    event(f"format: {fmt}")
    return data, None, f"{mode} {w}x{h} {fmt} {source}"


def declared_pixels(path):
    """The pixels a file's header declares, which Pillow decodes (up to its bomb limit); 0 if it cannot open it."""
    if path is None:
        return 0
    try:
        with Image.open(path) as img:
            return img.width * img.height
    except Exception:
        return 0


def rgb(img):
    if img.mode.startswith("I;16"):  # our one documented difference: 16-bit gray scaled, not clipped
        return to_rgb(img)
    return img.convert("RGB")


def timm_reads(source, path):
    """The RGB image timm's scripts would make, or None where Pillow cannot read it."""
    try:
        if isinstance(source, Image.Image):
            img = source
        elif isinstance(source, np.ndarray):
            img = Image.fromarray(source)
        else:
            with Image.open(path) as opened:
                opened.load()
                return rgb(opened)
        return rgb(img)
    except Exception:  # whatever Pillow raises on a damaged file: timm fails on it too
        return None


@settings(max_examples=8 * settings().max_examples)
@given(case=images(), which=st.integers(0, len(CONFIGS) - 1))
def test_preprocess_is_timm_or_a_mixer_error(tmp_path_factory, case, which):
    data, _, what = case
    cfg = CONFIGS[which]
    path = None
    if isinstance(data, bytes):
        path = tmp_path_factory.mktemp("img", numbered=True) / "image.bin"
        path.write_bytes(data)
    source = path if path is not None else data
    reset_peak_memory()
    before = memory_kib("VmRSS")
    try:
        ours = preprocess(source, cfg)
    except MixerError as e:
        ours, message = None, str(e)
        assert "\n" not in message
    growth = (memory_kib("VmHWM") - before) * 1024
    # the resize is capped at 64 MiB (a 3x65000 strip used 4 GB); decoding takes what the file declares, up to
    # Pillow's bomb limit (a damaged TIFF header declaring 9 million pixels is decoded, as timm would)
    bound = 200 * MIB + 8 * declared_pixels(path)
    assert growth < bound, (what, growth / MIB, bound / MIB)
    reference = timm_reads(source, path)
    if ours is None:
        event("MixerError" + (" (timm reads it)" if reference is not None else ""))
        if reference is not None:  # only the documented limits may refuse what timm accepts
            assert "aspect ratio" in message or "decompression-bomb" in message, (what, message)
        return
    assert reference is not None, f"{what}: we preprocessed an image Pillow cannot read"
    event("equal to timm")
    np.testing.assert_array_equal(ours, TRANSFORMS[which](reference).numpy(), err_msg=what)


@pytest.mark.parametrize("w, h", [(1, 256), (3, 768), (2, 513), (1, 257)])
def test_the_aspect_ratio_limit_is_exact(w, h):
    """1x256 resizes to 256x65536 = MAX_RESIZED_PIXELS: accepted; one pixel more in the ratio: refused."""
    img = Image.new("RGB", (w, h), (10, 200, 30))
    resized = 256 * int(256 * h / w)
    if resized <= MAX_RESIZED_PIXELS:
        np.testing.assert_array_equal(preprocess(img), TRANSFORMS[0](img).numpy())
    else:
        with pytest.raises(MixerError, match="aspect ratio"):
            preprocess(img)


def test_peak_memory_can_be_measured():
    """The memory bound above can fail: a 100 MB allocation shows in VmHWM after a reset."""
    import mmap

    reset_peak_memory()
    before = memory_kib("VmRSS")
    # fresh pages from the kernel (np.ones could be served from memory the heap already holds, late in a test run)
    with mmap.mmap(-1, 100 * MIB) as block:
        np.frombuffer(block, np.uint8)[:] = 1
        assert (memory_kib("VmHWM") - before) * 1024 >= 99 * MIB
    assert os.path.exists("/proc/self/clear_refs")

"""Fuzzing preprocessing: random sizes (1x1 to extreme aspect ratios), every Pillow mode, encoded and damaged files.

The property, for every image hypothesis makes:
    preprocess raises MixerError, or returns exactly timm's eval transform of the same image
    (Image.open(f).convert("RGB"), as timm's scripts read it); never another exception;
    and its peak memory stays bounded (the resize before the crop is capped).
A MixerError for an image timm accepts is allowed only for the documented limits (aspect ratio
past 256:1, Pillow's decompression-bomb limit). 16-bit grayscale is compared after our documented
scaling to 8 bits (Pillow's own conversion clips it). Case counts scale with the hypothesis profile.
"""
import importlib
import io
import os
import threading
import time

import numpy as np
import pytest
import timm
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data as skimage_data

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


@st.composite
def any_arrays(draw):
    """(array, description): any dtype and 0-4 axes, small; or a broadcast view declaring up to 10^10 pixels
    while holding a few bytes (what np.broadcast_to or a memmap can hand to preprocess)."""
    dtype = draw(st.sampled_from(["uint8", "uint8", "int8", "uint16", "int64", "float16", "float32", "float64",
                                  "bool", "complex64", "object"]))
    if draw(st.booleans()):
        shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=4)))
        array = np.zeros(shape, dtype) if dtype == "object" else \
            np.random.default_rng(0).integers(0, 256, shape).astype(dtype)
        return array, f"{dtype} {shape}"
    h, w = draw(st.integers(1, 100_000)), draw(st.integers(1, 100_000))
    channels = draw(st.sampled_from([(), (1,), (3,), (4,), (2,)]))
    return np.broadcast_to(np.zeros((1, 1) + channels, dtype), (h, w) + channels), f"{dtype} view {h}x{w}x{channels}"


@settings(max_examples=2 * settings().max_examples)
@given(case=any_arrays())
def test_any_array_is_an_image_or_one_line_that_says_what_to_do(case):
    array, what = case
    reset_peak_memory()
    before = memory_kib("VmRSS")
    try:
        ours = preprocess(array)
    except MixerError as e:
        message = str(e)
        assert "\n" not in message and message.startswith("image"), (what, message)
        if array.dtype == np.uint8 and array.ndim in (2, 3) and array.size and (array.ndim == 2 or array.shape[2] in (1, 3, 4)):
            # a uint8 image is refused only for its size, before any copy
            assert "decompression-bomb" in message or "aspect ratio" in message, (what, message)
            event("uint8 image refused for its size")
        else:
            assert " - " in message, (what, message)  # and says what to do
            event("not an image array")
        ours = None
    growth = (memory_kib("VmHWM") - before) * 1024
    h, w = (array.shape[:2] if array.ndim >= 2 else (0, 0))
    # a refused view is never copied; an accepted one is copied once (up to Pillow's limit), then resized (capped)
    bound = 200 * MIB + (0 if ours is None else 4 * h * w)
    assert growth < bound, (what, growth / MIB)
    if ours is not None:
        event("preprocessed")
        plain = np.ascontiguousarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)
        np.testing.assert_array_equal(ours, TRANSFORMS[0](timm_reads(plain, None)).numpy(), err_msg=what)


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


# --- reading a batch on several threads (preprocess.read_all) -------------------------------------------------

class RecordingBudget:
    """preprocess.PixelBudget that remembers the most pixels held at once and how many images held some."""

    def __init__(self, limit):
        self.inner = PIXEL_BUDGET(limit)
        self.limit, self.most, self.most_images, self.images = limit, 0, 0, 0

    def take(self, pixels):
        taken = self.inner.take(pixels)
        with self.inner._room:
            self.images += 1
            self.most = max(self.most, self.inner.used)
            self.most_images = max(self.most_images, self.images)
        return taken

    def give(self, pixels):
        with self.inner._room:
            self.images -= pixels > 0
        self.inner.give(pixels)


PREPROCESS = importlib.import_module("numpy_mixer.preprocess")  # the package's `preprocess` is the function
PIXEL_BUDGET = PREPROCESS.PixelBudget


def read_or_error(source):
    try:
        return preprocess(source, CONFIGS[0])
    except MixerError as e:
        return e


@settings(max_examples=settings().max_examples // 2, deadline=None)
@given(cases=st.lists(images(), min_size=1, max_size=10), missing=st.sets(st.integers(0, 9), max_size=2),
       workers=st.integers(2, 8), budget=st.integers(1, 400 * 400))
def test_reading_on_threads_is_reading_one_by_one_within_the_pixel_budget(tmp_path_factory, cases, missing, workers,
                                                                          budget):
    """read_all on several threads gives the same arrays and the same one-line errors, in input order, as
    reading one image after another; the decoded pixels held at once never pass its budget."""
    folder = tmp_path_factory.mktemp("batch", numbered=True)
    sources = []
    for i, (data, _, _) in enumerate(cases):
        if isinstance(data, bytes):
            data = folder / f"image-{i}.bin"
            data.write_bytes(cases[i][0])
        sources.append(str(folder / f"missing-{i}.jpg") if i in missing else data)
    budgets = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PREPROCESS, "PixelBudget", lambda limit: budgets.append(RecordingBudget(limit)) or budgets[-1])
        together = PREPROCESS.read_all(sources, read_or_error, workers, budget_pixels=budget)
    alone = [read_or_error(source) for source in sources]
    assert len(together) == len(alone) == len(sources)
    for a, b in zip(together, alone):
        if isinstance(b, MixerError):
            assert isinstance(a, MixerError) and str(a) == str(b) and "\n" not in str(a)
        else:
            np.testing.assert_array_equal(a, b)
    files = [source for source in sources if isinstance(source, (str, os.PathLike))]
    if len(files) > 1:  # files go to the threads, under one budget
        (recorded,) = budgets
        assert recorded.most <= budget and recorded.inner.used == 0
    else:
        assert budgets == []


def test_the_pixel_budget_bounds_parallel_reads_and_lets_a_larger_image_through_alone(tmp_path, monkeypatch):
    """100x100 images (10,000 pixels decoded + 256x256 resized) under a budget of 2.5 of them: two at a time,
    never three (held while read() sleeps); a 600x600 image, over the whole budget, is read alone."""
    each = 100 * 100 + 256 * 256
    paths = []
    for i, side in enumerate([100] * 6 + [600] + [100] * 3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (side, side), (i * 20, 100, 50)).save(paths[-1])
    budgets = []
    monkeypatch.setattr(PREPROCESS, "PixelBudget", lambda limit: budgets.append(RecordingBudget(limit)) or budgets[-1])

    def slow_read(path):
        x = read_or_error(path)
        time.sleep(0.05)  # the pixels stay held until read returns: reads overlap here if the budget lets them
        return x

    out = PREPROCESS.read_all(paths, slow_read, 8, budget_pixels=int(2.5 * each))
    assert all(isinstance(x, np.ndarray) for x in out)
    for x, path in zip(out, paths):
        np.testing.assert_array_equal(x, read_or_error(path))
    (recorded,) = budgets
    assert recorded.most <= 2.5 * each and recorded.most_images == 2  # parallel, and bounded
    assert PREPROCESS.read_all(paths[:1], slow_read, 8, budget_pixels=1)[0].shape == (3, 224, 224)


def test_in_memory_images_are_read_in_the_calling_thread(tmp_path):
    """A lazily opened PIL image given several times shares one file handle: threads must not read it at
    once (it gave wrong arrays and 'truncated' errors); files in the same batch still go to the threads."""
    path = tmp_path / "chelsea.jpg"
    Image.fromarray(skimage_data.chelsea()).save(path, quality=90)
    files = [str(path)] * 4
    for _ in range(5):
        lazy = Image.open(path)
        batch = [lazy, files[0], lazy, np.asarray(Image.open(path)), lazy, files[1]]
        threads = []

        def read(img):
            threads.append((isinstance(img, str), threading.current_thread() is threading.main_thread()))
            return read_or_error(img)

        out = PREPROCESS.read_all(batch, read, 4)
        want = read_or_error(str(path))
        assert all(isinstance(x, np.ndarray) and np.array_equal(x, want) for x in out)
        assert {main for is_file, main in threads if not is_file} == {True}  # PIL images and arrays: here
        assert {main for is_file, main in threads if is_file} == {False}  # files: on the threads

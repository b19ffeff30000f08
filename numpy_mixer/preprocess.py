"""timm's eval transform in NumPy + Pillow, equal to the bit.

timm: resolve_model_data_config(model) + create_transform(**cfg, is_training=False) gives
    Resize(int(224 / crop_pct), interpolation)  # shorter side to 256, torchvision rounding
    CenterCrop(224)
    ToTensor()                                  # HWC uint8 -> CHW float32 / 255
    Normalize(mean, std)
torchvision resizes a PIL image with PIL's own Image.resize, so the same call here gives the same pixels.

Memory stays bounded for any input: a very thin image (3x65000) would resize to 256 x 5.5 million
pixels before the crop, so an aspect ratio past 256:1 (MAX_RESIZED_PIXELS) is refused.
Files are opened as regular files only (a FIFO would block), and their declared size is checked
against Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS) before any pixel is decoded.

read_all reads a batch's files on several threads (Pillow decodes and resizes without the GIL): a
12-megapixel JPEG takes about 0.1 s, as long as the model's pass per image on 2 cores. The threads
together hold at most READ_PIXELS pixels, decoded and resized, so memory stays bounded whatever the batch holds.
"""
import io
import math
import numbers
import os
import struct
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import MixerError, first_line
from .fetch import fetch, is_url
from .files import open_regular
from .weights import DEFAULT_PREPROCESSING

_INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                  "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
                  "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


# What a corrupt or truncated file makes Pillow's decoders raise (its own fuzzing harness expects these)
_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, struct.error, Image.DecompressionBombError)
# The most pixels that read_all's threads hold at once, decoded and resized (about 200 MB: Pillow keeps RGB
# in 4 bytes a pixel): 3 photos of 12 megapixels, or 12 of 3. A larger image is read when it is alone.
READ_PIXELS = 48 << 20
# The most pixels the resize before the crop may make (64 MiB in Pillow's 4 bytes a pixel): aspect
# ratios up to 256:1 at the usual 256. A thinner image is refused (see resize_and_crop).
MAX_RESIZED_PIXELS = 1 << 24


_warnings_lock = threading.Lock()  # warnings.catch_warnings changes global state: one thread at a time


def _unreadable(path, error):
    return MixerError(f"{path}: cannot read the image ({first_line(error)}) - check the file, or save it again")


def _open_file(path, check_size=None, data=None):
    """An image file -> an RGB PIL image, or a MixerError naming the file; check_size(w, h) before decoding.

    check_size may return the (width, height) the image will be resized to: under read_all, those pixels
    count against its budget too. data: the bytes fetched from the URL path (numpy_mixer.fetch), checked
    exactly as a file's.
    """
    with open_regular(path, "image") if data is None else io.BytesIO(data) as f:
        try:
            # the size is checked below, with a message that says what to do (Image.open reads the header only)
            with _warnings_lock, warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(f)
        except UnidentifiedImageError:
            hint = "" if data is None else (f" ({len(data):,} bytes, starting {data[:16]!r}) - check that the URL "
                                            "points at the image itself, not a web page")
            raise MixerError(f"{path}: not an image Pillow can read{hint or ' - check the file'}") from None
        except Image.DecompressionBombError:
            raise MixerError(f"{path}: declares more than twice {Image.MAX_IMAGE_PIXELS:,} pixels, Pillow's "
                             "decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS); raise it if you trust "
                             "the file") from None
        except _DECODE_ERRORS as e:
            raise _unreadable(path, e) from None
        with opened:
            w, h = opened.size
            _check_pixels(path, w, h, "raise it if you trust the file")
            resized = check_size(w, h) if check_size is not None else None
            # under read_all: wait for room in its budget for the decoded and the resized image, before decoding
            _hold_pixels(w * h + (math.prod(resized) if resized else 0))
            try:
                opened.load()
                return _checked_rgb(opened, path)
            except _DECODE_ERRORS as e:  # truncated or corrupt image data
                raise _unreadable(path, e) from None


# --- reading many images at once ------------------------------------------------------------------------

class PixelBudget:
    """Decoded pixels that parallel reads may hold at once: a read waits for room, and an image larger
    than the whole budget waits until it is the only one held."""

    def __init__(self, limit):
        self.limit, self.used = limit, 0
        self._room = threading.Condition()

    def take(self, pixels):
        """Wait until `pixels` fit (capped at the limit); -> what was taken, for give()."""
        pixels = min(pixels, self.limit)
        with self._room:
            self._room.wait_for(lambda: self.used + pixels <= self.limit)
            self.used += pixels
        return pixels

    def give(self, pixels):
        with self._room:
            self.used -= pixels
            self._room.notify_all()


_reading = threading.local()  # in read_all's threads: the budget, and what this thread holds of it


def _hold_pixels(pixels):
    budget = getattr(_reading, "budget", None)
    if budget is not None:
        _reading.held += budget.take(pixels)


def read_all(images, read, workers, budget_pixels=None):
    """[read(img) for img in images], in order: files and URLs on up to `workers` threads.

    Each file's pixels (decoded, and resized before the crop) count against a budget of budget_pixels
    (default READ_PIXELS) from the moment its size is checked until read(img) returns. PIL images and
    arrays are read here, one after another: a lazily opened PIL image given twice shares one file handle,
    which two threads must not read at once. read should turn errors into values (an exception stops the lot).
    """
    images = list(images)
    files = [i for i, img in enumerate(images) if isinstance(img, (str, os.PathLike))]
    workers = min(workers, len(files))
    if workers <= 1:
        return [read(img) for img in images]
    threaded = set(files)
    results = [None if i in threaded else read(img) for i, img in enumerate(images)]
    budget = PixelBudget(READ_PIXELS if budget_pixels is None else budget_pixels)

    def one(img):
        _reading.budget, _reading.held = budget, 0
        try:
            return read(img)
        finally:
            budget.give(_reading.held)
            _reading.budget = None

    with ThreadPoolExecutor(workers, thread_name_prefix="numpy-mixer-read") as pool:
        for i, result in zip(files, pool.map(one, [images[i] for i in files])):
            results[i] = result
    return results


def read_or_error(model, img, known=None):
    """model.preprocess(img), or the MixerError that names the image: read_all's read for predict and embed.

    -> [3, S, S] float32 or a MixerError. known: {path: MixerError} found before (a missing file), returned
    without reading the path.
    """
    if known and isinstance(img, (str, os.PathLike)) and img in known:
        return known[img]
    try:
        return model.preprocess(img)
    except MixerError as e:
        return e
    except _DECODE_ERRORS as e:  # one that load_image's own checks did not turn into a MixerError
        return _unreadable(image_name(img), e)


def image_name(img):
    """How an image is named in an error: its path or URL, else its type."""
    if isinstance(img, (str, os.PathLike)):
        return os.fspath(img)
    return f"a {type(img).__name__}"


def _checked_rgb(img, name):
    if img.width == 0 or img.height == 0:
        raise MixerError(f"{name}: the image is {img.width}x{img.height}, it has no pixels")
    return to_rgb(img)


def load_image(img, check_size=None):
    """A path, http(s) URL, PIL image or HWC / HW uint8 array -> an RGB PIL image.

    check_size(width, height), if given, runs on a file's declared size before its pixels are decoded.
    """
    if is_url(img):  # the downloaded bytes get the same checks before decoding as a file
        return _open_file(img, check_size, data=fetch(img))
    if isinstance(img, (str, os.PathLike)):
        return _open_file(img, check_size)
    if isinstance(img, Image.Image):
        try:
            img.load()  # a lazily opened file is read here: closed or truncated ones fail now, with a message
        except _DECODE_ERRORS as e:
            raise MixerError(f"the PIL image cannot be read ({first_line(e)}): was it closed, or is its file "
                             "truncated?") from None
        return _checked_rgb(img, "the PIL image")
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
            raise MixerError(f"image array has shape {img.shape} and dtype {img.dtype}; expected HxWx3 "
                             f"(or HxW, HxWx1, HxWx4) uint8 - {_array_hint(img)}")
        if img.size == 0:
            raise MixerError(f"image array has shape {img.shape}: no pixels - pass an image of at least 1x1")
        h, w = img.shape[:2]
        # as for a file, before any copy: a broadcast or strided view can declare far more pixels than it holds
        _check_pixels("image array", w, h, "downscale it first, or raise that limit")
        if check_size is not None:
            check_size(w, h)
        return to_rgb(Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img))
    raise MixerError(f"cannot read an image from {type(img).__name__}; pass a path, a PIL image or a uint8 array")


def _check_pixels(name, w, h, advice):
    """A MixerError if w x h is over Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS; None: no limit)."""
    if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
        raise MixerError(f"{name}: {w}x{h} = {w * h:,} pixels, over Pillow's decompression-bomb limit of "
                         f"{Image.MAX_IMAGE_PIXELS:,} (PIL.Image.MAX_IMAGE_PIXELS); {advice}")


def _array_hint(img):
    """What to do with an array load_image cannot take, from its dtype and shape."""
    if img.ndim == 4:
        return "one image per array: pass a list of HxWx3 arrays for a batch"
    if img.ndim == 3 and img.shape[0] in (1, 3, 4) and img.shape[2] not in (1, 3, 4):
        return "it looks channels-first: pass a.transpose(1, 2, 0)"
    if img.dtype.kind == "f":
        return "for values in 0..1, pass (a * 255).round().clip(0, 255).astype(np.uint8)"
    if img.dtype.kind in "iub":
        return "convert it with a.clip(0, 255).astype(np.uint8) if its values are 0..255"
    return "convert it to a uint8 array of 0..255 values"


def to_rgb(img):
    """Any Pillow mode -> RGB, as `Image.open(f).convert("RGB")` in timm's inference scripts.

    16-bit grayscale (I;16, as Pillow opens 16-bit PNG and TIFF) is first scaled to 8 bits
    (0..65535 -> 0..255): Pillow's own conversion would clip every value above 255 to white.
    """
    if img.mode.startswith("I;16"):
        gray = np.asarray(img).astype(np.float32) / np.float32(257)  # 65535 / 255 = 257
        img = Image.fromarray(np.clip(np.rint(gray), 0, 255).astype(np.uint8), "L")
    if img.mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except ValueError as e:  # a mode Pillow has no conversion for (La)
        raise MixerError(f"cannot convert a Pillow image of mode {img.mode} to RGB ({e})") from None


def _shorter_side_size(w, h, size):
    """(new_w, new_h): shorter side to size, the other scaled and truncated, as torchvision's Resize(int)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def resize_shorter_side(img, size, interpolation):
    """Shorter side to `size`, the other scaled and truncated, as torchvision's Resize(int)."""
    return img.resize(_shorter_side_size(*img.size, size), _INTERPOLATION[interpolation])


def center_crop(img, size):
    """The central size x size square, as torchvision's CenterCrop (rounding half to even)."""
    w, h = img.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def resize_and_crop(img, scale_size, crop_size, interpolation, name="image"):
    """resize_shorter_side then center_crop (timm's transform to the bit), refusing extreme aspect ratios.

    The whole image is resized before the crop, as timm does: a 3x65000 strip would become 256 x 5.5
    million pixels (over 4 GB). Resizing only the cropped region (Pillow's resize(box=...)) is not
    the same: Pillow keeps the box in single precision, which moved values by about 20/255 in our tests. So past
    MAX_RESIZED_PIXELS (an aspect ratio of 256:1 at 256) the image is refused with a clear error.
    """
    new_size = _checked_resize(*img.size, scale_size, name)
    return center_crop(img.resize(new_size, _INTERPOLATION[interpolation]), crop_size)


def _checked_resize(w, h, scale_size, name="image"):
    """The size resize_shorter_side makes, or a MixerError if it is over MAX_RESIZED_PIXELS."""
    new_w, new_h = _shorter_side_size(w, h, scale_size)
    if new_w * new_h > MAX_RESIZED_PIXELS:
        longest = MAX_RESIZED_PIXELS // scale_size
        raise MixerError(f"{name}: {w}x{h} pixels, an aspect ratio of {max(w, h) / min(w, h):,.0f}:1; timm's transform "
                         f"would resize it to {new_w}x{new_h} before the crop. Crop or pad it to at most "
                         f"{longest // scale_size}:1 ({scale_size}x{longest} after the resize)")
    return new_w, new_h


MIN_CROP_PCT = 0.1  # timm's models use 0.875 to 1; below 0.1 the resize before the crop gets huge


def _whole(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_preprocessing(cfg, where="preprocess"):
    """The preprocessing settings (mean, std, interpolation, crop_pct; input_size if given), checked.

    -> the dict with Google's defaults filled in (mean and std as tuples of floats), or a one-line
    MixerError starting with `where`. Numbers may be NumPy's; mean and std any sequence of three.
    """
    if cfg is not None and not hasattr(cfg, "get"):
        raise MixerError(f"{where}: the preprocessing settings are a dict (a model's pretrained_cfg) or None, not "
                         f"{type(cfg).__name__}")
    cfg = dict(DEFAULT_PREPROCESSING, **(cfg or {}))
    if not isinstance(cfg["interpolation"], str) or cfg["interpolation"] not in _INTERPOLATION:
        raise MixerError(f"{where}: interpolation {cfg['interpolation']!r}; expected one of {', '.join(_INTERPOLATION)}")
    crop_pct = cfg["crop_pct"]
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, numbers.Real) or not MIN_CROP_PCT <= crop_pct < math.inf:
        raise MixerError(f"{where}: crop_pct {crop_pct!r}; expected a number from {MIN_CROP_PCT} up (timm's is 0.875)")
    for key in ("mean", "std"):
        try:
            value = np.asarray(cfg[key], dtype=np.float64)
        except (TypeError, ValueError):
            value = None
        if value is None or value.shape != (3,) or not np.isfinite(value).all() or (key == "std" and value.min() <= 0):
            raise MixerError(f"{where}: {key} {cfg[key]!r}; expected three numbers, one per RGB channel"
                             + (", above 0" if key == "std" else ""))
        cfg[key] = tuple(float(v) for v in value)
    if "input_size" in cfg:
        size = cfg["input_size"]
        if not isinstance(size, (list, tuple)) or len(size) != 3 or not all(_whole(v) and v > 0 for v in size):
            raise MixerError(f"{where}: input_size {size!r}; expected [channels, height, width]")
    return cfg


def preprocess(img, cfg=None, img_size=224):
    """A path, PIL image or uint8 array -> the [3, S, S] float32 array timm's eval transform gives.

    cfg: mean, std, interpolation and crop_pct (a model's pretrained_cfg); Google's defaults if None.
    """
    cfg = check_preprocessing(cfg)
    if "input_size" in cfg:
        img_size = cfg["input_size"][-1]
    if not _whole(img_size) or img_size < 1:
        raise MixerError(f"preprocess: img_size {img_size!r}; expected a whole number of pixels above 0")
    img_size = int(img_size)
    scale_size = math.floor(img_size / cfg["crop_pct"])  # 256 for 224 and 0.875
    if scale_size < 1:
        raise MixerError(f"preprocess: crop_pct {cfg['crop_pct']!r} would resize the image to {scale_size} pixels "
                         f"before a {img_size}-pixel crop; timm's is 0.875")
    name = os.fspath(img) if isinstance(img, (str, os.PathLike)) else "image"
    rgb = load_image(img, lambda w, h: _checked_resize(w, h, scale_size, name))  # a thin file is not decoded
    rgb = resize_and_crop(rgb, scale_size, img_size, cfg["interpolation"], name)
    x = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)  # [3, S, S]
    mean = np.asarray(cfg["mean"], np.float32)[:, None, None]
    std = np.asarray(cfg["std"], np.float32)[:, None, None]
    return (x - mean) / std

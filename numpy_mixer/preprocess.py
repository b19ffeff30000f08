"""timm's eval transform in NumPy + Pillow, equal to the bit.

timm: resolve_model_data_config(model) + create_transform(**cfg, is_training=False) gives
    Resize(int(224 / crop_pct), interpolation)  # shorter side to 256, torchvision rounding
    CenterCrop(224)
    ToTensor()                                  # HWC uint8 -> CHW float32 / 255
    Normalize(mean, std)
torchvision resizes a PIL image with PIL's own Image.resize, so the same call here gives the same pixels.
"""
import math
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import MixerError
from .weights import DEFAULT_PREPROCESSING

_INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                  "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
                  "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


def load_image(img):
    """A path, http(s) URL, PIL image or HWC / HW uint8 array -> an RGB PIL image."""
    if isinstance(img, str) and img[:8].lower().startswith(("http://", "https://")):  # numpy_mixer.fetch
        from .fetch import fetch_image
        return load_image(fetch_image(img))
    if isinstance(img, (str, os.PathLike)):
        try:
            with Image.open(img) as opened:
                opened.load()
                return to_rgb(opened)
        except FileNotFoundError:
            raise MixerError(f"{img}: no such file") from None
        except IsADirectoryError:
            raise MixerError(f"{img}: is a directory, not an image") from None
        except UnidentifiedImageError:
            raise MixerError(f"{img}: not an image Pillow can read") from None
        except OSError as e:  # truncated or corrupt image data
            raise MixerError(f"{img}: cannot read the image ({e})") from None
    if isinstance(img, Image.Image):
        return to_rgb(img)
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
            raise MixerError(f"image array has shape {img.shape} and dtype {img.dtype}; expected HxWx3 "
                             "(or HxW, HxWx1, HxWx4) uint8")
        return to_rgb(Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img))
    raise MixerError(f"cannot read an image from {type(img).__name__}; pass a path, a PIL image or a uint8 array")


def to_rgb(img):
    """Any Pillow mode -> RGB, as `Image.open(f).convert("RGB")` in timm's inference scripts.

    16-bit grayscale (I;16, as Pillow opens 16-bit PNG and TIFF) is first scaled to 8 bits
    (0..65535 -> 0..255): Pillow's own conversion would clip every value above 255 to white.
    """
    if img.mode.startswith("I;16"):
        gray = np.asarray(img).astype(np.float32) / np.float32(257)  # 65535 / 255 = 257
        img = Image.fromarray(np.clip(np.rint(gray), 0, 255).astype(np.uint8), "L")
    return img if img.mode == "RGB" else img.convert("RGB")


def resize_shorter_side(img, size, interpolation):
    """Shorter side to `size`, the other scaled and truncated, as torchvision's Resize(int)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), _INTERPOLATION[interpolation])


def center_crop(img, size):
    """The central size x size square, as torchvision's CenterCrop (rounding half to even)."""
    w, h = img.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def preprocess(img, cfg=None, img_size=224):
    """A path, PIL image or uint8 array -> the [3, S, S] float32 array timm's eval transform gives.

    cfg: mean, std, interpolation and crop_pct (a model's pretrained_cfg); Google's defaults if None.
    """
    cfg = dict(DEFAULT_PREPROCESSING, **(cfg or {}))
    if "input_size" in cfg:
        img_size = cfg["input_size"][-1]
    rgb = load_image(img)
    scale_size = math.floor(img_size / cfg["crop_pct"])  # 256 for 224 and 0.875
    rgb = center_crop(resize_shorter_side(rgb, scale_size, cfg["interpolation"]), img_size)
    x = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)  # [3, S, S]
    mean = np.asarray(cfg["mean"], np.float32)[:, None, None]
    std = np.asarray(cfg["std"], np.float32)[:, None, None]
    return (x - mean) / std

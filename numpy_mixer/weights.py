"""Checkpoints: find them (Hugging Face hub or a local file), read safetensors, check every key.

No pickle is ever loaded: .pth / .bin / .pt / .ckpt files are refused before they are opened.
The safetensors file is memory-mapped, so the weights are paged in from disk, not copied.
"""
import dataclasses
import json
import os
import re
import struct
from dataclasses import dataclass

import numpy as np

from .errors import MixerError

DEFAULT_MODEL = "mixer_b16_224.goog_in21k_ft_in1k"

# Preprocessing and label set of each pretrained tag, as timm's default_cfgs in
# timm/models/mlp_mixer.py have them (all: 224x224 input, crop_pct 0.875).
_GOOG = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", crop_pct=0.875)
_MIIL = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear", crop_pct=0.875)
PRETRAINED = {
    "mixer_b16_224.goog_in21k_ft_in1k": dict(_GOOG, num_classes=1000, labels="imagenet-1k"),
    "mixer_b16_224.goog_in21k": dict(_GOOG, num_classes=21843, labels="imagenet-21k-goog"),
    "mixer_l16_224.goog_in21k_ft_in1k": dict(_GOOG, num_classes=1000, labels="imagenet-1k"),
    "mixer_l16_224.goog_in21k": dict(_GOOG, num_classes=21843, labels="imagenet-21k-goog"),
    "mixer_b16_224.miil_in21k": dict(_MIIL, num_classes=11221, labels="imagenet-21k-miil"),
    "mixer_b16_224.miil_in21k_ft_in1k": dict(_MIIL, num_classes=1000, labels="imagenet-1k"),
}
# Shipped inside the package, no download: a small Mixer (24x24 input) trained by tools/train_digits.py on
# scikit-learn's 8x8 digits and on digits typed in fonts or drawn with pens, in both polarities.
BUNDLED = {
    "digits": dict(mean=(0.7, 0.7, 0.7), std=(0.32, 0.32, 0.32), interpolation="bilinear", crop_pct=1.0,
                   num_classes=10, labels=[str(i) for i in range(10)]),
}
# A bare .safetensors file carries no preprocessing config: assume Google's (most Mixer weights).
DEFAULT_PREPROCESSING = _GOOG
LABEL_SETS_BY_CLASSES = {1000: "imagenet-1k", 21843: "imagenet-21k-goog", 11221: "imagenet-21k-miil"}

_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle", ".tar")
_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "BF16": np.uint16}


@dataclass(frozen=True)
class MixerConfig:
    """The shape of a Mixer, read off its weights."""

    patch_size: int  # P
    img_size: int  # G * P
    in_chans: int
    embed_dim: int  # C
    depth: int  # number of blocks
    tokens_dim: int  # T
    channels_dim: int  # H
    num_classes: int  # K, 0 when there is no head

    @property
    def num_patches(self):  # N
        return (self.img_size // self.patch_size) ** 2


# timm's Mixer architectures (timm/models/mlp_mixer.py); token MLP 0.5 C, channel MLP 4 C.
# The ones without a pretrained tag above are "untrained" in timm.
ARCHITECTURES = {
    name: MixerConfig(patch, 224, 3, width, depth, width // 2, width * 4, 1000)
    for name, patch, width, depth in [("mixer_s32_224", 32, 512, 8), ("mixer_s16_224", 16, 512, 8),
                                      ("mixer_b32_224", 32, 768, 12), ("mixer_b16_224", 16, 768, 12),
                                      ("mixer_l32_224", 32, 1024, 24), ("mixer_l16_224", 16, 1024, 24)]
}


def expected_shapes(config):
    """timm's state-dict keys and shapes for a config, in timm's order."""
    c = config
    shapes = {"stem.proj.weight": (c.embed_dim, c.in_chans, c.patch_size, c.patch_size),
              "stem.proj.bias": (c.embed_dim,)}
    for i in range(c.depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (c.embed_dim,), b + "norm1.bias": (c.embed_dim,),
            b + "mlp_tokens.fc1.weight": (c.tokens_dim, c.num_patches), b + "mlp_tokens.fc1.bias": (c.tokens_dim,),
            b + "mlp_tokens.fc2.weight": (c.num_patches, c.tokens_dim), b + "mlp_tokens.fc2.bias": (c.num_patches,),
            b + "norm2.weight": (c.embed_dim,), b + "norm2.bias": (c.embed_dim,),
            b + "mlp_channels.fc1.weight": (c.channels_dim, c.embed_dim),
            b + "mlp_channels.fc1.bias": (c.channels_dim,),
            b + "mlp_channels.fc2.weight": (c.embed_dim, c.channels_dim),
            b + "mlp_channels.fc2.bias": (c.embed_dim,),
        })
    shapes.update({"norm.weight": (c.embed_dim,), "norm.bias": (c.embed_dim,)})
    if c.num_classes:
        shapes.update({"head.weight": (c.num_classes, c.embed_dim), "head.bias": (c.num_classes,)})
    return shapes


def infer_config(state_dict, source="checkpoint"):
    """Read the architecture off the tensors' shapes; every other key is then checked against it."""
    def shape(key):
        if key not in state_dict:
            raise MixerError(f"{source}: missing tensor {key!r}; is this a timm MLP-Mixer checkpoint?")
        return tuple(state_dict[key].shape)

    stem = shape("stem.proj.weight")
    if len(stem) != 4 or stem[2] != stem[3]:
        raise MixerError(f"{source}: 'stem.proj.weight' has shape {stem}, expected (C, 3, P, P)")
    embed_dim, in_chans, patch_size, _ = stem
    block_ids = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = len(block_ids)
    if depth == 0:
        raise MixerError(f"{source}: no 'blocks.*' tensors; is this a timm MLP-Mixer checkpoint?")
    for key in ("blocks.0.mlp_tokens.fc1.weight", "blocks.0.mlp_channels.fc1.weight"):
        if len(shape(key)) != 2:
            raise MixerError(f"{source}: {key!r} has shape {shape(key)}, expected a matrix (out, in)")
    tokens_dim, num_patches = shape("blocks.0.mlp_tokens.fc1.weight")
    channels_dim = shape("blocks.0.mlp_channels.fc1.weight")[0]
    grid = int(round(num_patches ** 0.5))
    if grid * grid != num_patches:
        raise MixerError(f"{source}: 'blocks.0.mlp_tokens.fc1.weight' mixes {num_patches} tokens, "
                         "which is not a square grid of patches")
    num_classes = shape("head.weight")[0] if "head.weight" in state_dict else 0
    return MixerConfig(patch_size, grid * patch_size, in_chans, embed_dim, depth, tokens_dim, channels_dim,
                       num_classes)


def check_state_dict(state_dict, config, source="checkpoint"):
    """Every key present, none extra, every shape as expected, floating point; else one clear error."""
    expected = expected_shapes(config)
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    if missing:
        raise MixerError(f"{source}: missing tensor {missing[0]!r} (expected shape {expected[missing[0]]})"
                         + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    if extra:
        raise MixerError(f"{source}: unexpected tensor {extra[0]!r} with shape {tuple(state_dict[extra[0]].shape)}"
                         + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
                         + "; this is not a timm MLP-Mixer checkpoint of a known layout")
    for key, want in expected.items():
        found = tuple(state_dict[key].shape)
        if found != want:
            raise MixerError(f"{source}: tensor {key!r} has shape {found}, expected {want} "
                             f"for {config.depth} blocks of width {config.embed_dim}")
        if state_dict[key].dtype.kind != "f":
            raise MixerError(f"{source}: tensor {key!r} has dtype {state_dict[key].dtype}, expected floating point")


def check_architecture(config, name, num_classes):
    """A checkpoint fetched for a timm name must have that name's architecture."""
    arch = name.split(".")[0]
    if arch in ARCHITECTURES:
        want = dataclasses.replace(ARCHITECTURES[arch], num_classes=num_classes)
        if config != want:
            raise MixerError(f"{name}: the downloaded checkpoint has {config}, expected {want}; delete it from "
                             "the Hugging Face cache and download it again")


def read_safetensors(path):
    """{key: array} from a .safetensors file, memory-mapped (float16/bfloat16 become float32 copies)."""
    path = os.fspath(path)
    if path.lower().endswith(_PICKLE_SUFFIXES):
        raise MixerError(f"{path}: refusing to load a pickled checkpoint (unpickling can run arbitrary code); "
                         "convert it to .safetensors first, e.g. with safetensors.torch.save_file")
    if not os.path.isfile(path):
        raise MixerError(f"{path}: no such file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise MixerError(f"{path}: not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, 100_000_000):
            raise MixerError(f"{path}: not a safetensors file, or truncated (header length {header_len} "
                             f"in a file of {size} bytes)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MixerError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise MixerError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    tensors = {}
    for key, info in header.items():
        try:
            dtype, shape, (start, end) = _DTYPES.get(info["dtype"]), tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise MixerError(f"{path}: corrupt safetensors header entry for {key!r}") from None
        if not all(isinstance(v, int) and v >= 0 for v in (*shape, start, end)):
            raise MixerError(f"{path}: corrupt safetensors header entry for {key!r}")
        if dtype is None:
            raise MixerError(f"{path}: tensor {key!r} has dtype {info['dtype']}; only F32, F64, F16 and BF16 "
                             "weights can be used")
        count = int(np.prod(shape, dtype=np.int64))
        if end - start != count * np.dtype(dtype).itemsize or data_start + end > size:
            raise MixerError(f"{path}: tensor {key!r} {shape} does not fit in the file: truncated or corrupt "
                             f"({size} bytes); download it again")
        if count == 0:
            array = np.zeros(shape, dtype)
        else:
            array = np.memmap(path, dtype=dtype, mode="r", offset=data_start + start, shape=shape)
        if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] == "F16":
            array = array.astype(np.float32)
        tensors[key] = array
    return tensors


def resolve(name_or_path):
    """A model name or path -> (local weights file, pretrained config or None).

    Names as timm takes them: a pretrained tag (mixer_b16_224.goog_in21k_ft_in1k, or its architecture),
    hf-hub:owner/repo[@revision], local-dir:/folder; also a folder with timm's config.json, a .safetensors
    file, or "digits" (shipped). See numpy_mixer.hub.
    """
    from . import hub

    text = os.fspath(name_or_path)
    if text in BUNDLED:  # before the path check, so a folder named "digits" does not shadow it
        return os.path.join(os.path.dirname(__file__), "data", f"{text}.safetensors"), dict(BUNDLED[text], name=text)
    if hub.is_local_name(text):
        return hub.resolve_folder(text[len(hub.LOCAL_PREFIX):])
    if os.path.isdir(text):
        return hub.resolve_folder(text, source=text)
    if os.path.exists(text) or text.lower().endswith((".safetensors",) + _PICKLE_SUFFIXES):
        return text, None
    if hub.is_hub_name(text):
        repo_id = text.split(":", 1)[1]
        rest = repo_id.removeprefix("timm/")
        if not (repo_id.startswith("timm/") and rest.split(".")[0] in ARCHITECTURES
                and (rest in PRETRAINED or "." not in rest)):  # timm's own tags (or architectures): below
            return hub.resolve_hub(repo_id)
    name = text.removeprefix("timm/").removeprefix("hf-hub:timm/").removeprefix("hf_hub:timm/")
    if "." not in name:  # a bare architecture picks its first pretrained tag, as timm does
        tags = [t for t in PRETRAINED if t.split(".")[0] == name]
        if not tags:
            if name in ARCHITECTURES:
                raise MixerError(f"{name} has no pretrained weights in timm; pass a local .safetensors file "
                                 "(--weights FILE)")
            raise _unknown(name)
        name = tags[0]
    if name not in PRETRAINED:
        raise _unknown(name)
    # timm's config.json when the cache has it (it is not fetched for this), else timm's default_cfgs above
    cfg = dict(PRETRAINED[name], name=name)
    cached = hub.cached_timm_config(name)
    if cached is not None:
        # ... but our label sets: the same classes in the same order, with readable names, not synsets
        cfg.update({k: v for k, v in cached.items() if k not in ("name", "labels")})
    return _download(name), cfg


def _unknown(name):
    return MixerError(f"unknown model {name!r} (and no such file); known names: {', '.join([*PRETRAINED, *BUNDLED])}, "
                      "hf-hub:owner/repo[@revision], local-dir:/folder, a folder with config.json, "
                      "or a path to a .safetensors file")


def _download(name):
    """timm/<name>/model.safetensors through huggingface_hub (so HF_HOME and HF_HUB_OFFLINE apply);
    without a network, a MixerError within seconds (numpy_mixer.hub.hub_file)."""
    from .hub import WEIGHTS_NAME, hub_file

    return hub_file(f"timm/{name}", WEIGHTS_NAME)

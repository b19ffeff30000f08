"""Checkpoints: find them (Hugging Face hub or a local file), read safetensors, check every key.

No pickle is ever loaded: .pth / .bin / .pt / .ckpt files are refused before they are opened.
The safetensors file is memory-mapped once, so the weights are paged in from disk, not copied;
its header is validated in full (sizes, offsets, dtypes, key names) before any array is made.
"""
import collections
import dataclasses
import json
import math
import os
import re
import struct
from dataclasses import dataclass

import numpy as np

from .errors import MixerError, first_line
from .files import open_regular

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
# safetensors dtype -> how its bytes are read (little-endian, as the format fixes) and the dtype it loads as
_DTYPES = {"F32": (np.dtype("<f4"), np.float32), "F64": (np.dtype("<f8"), np.float64),
           "F16": (np.dtype("<f2"), np.float32), "BF16": (np.dtype("<u2"), np.float32)}
_LOADS_AS = {name: np.dtype(loads_as) for name, (_, loads_as) in _DTYPES.items()}
# The safetensors crate accepts headers up to 100 MB; a Mixer's is about 30 KB (l16: 294 tensors), so
# 8 MiB leaves room for any depth anyone trains and keeps a hostile header's parse small and quick.
MAX_HEADER_BYTES = 8 * 1024 * 1024
_MAX_NDIM = 32  # NumPy 1.x's limit (2.x allows 64); a Mixer's tensors have at most 4 axes


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
# The most classes a head may have (load_model's num_classes, random-checkpoint --num-classes): generous (ImageNet-21k
# has 21,843), and it bounds the head [K, C] before it is allocated: 1,000,000 x 1024 float32 is 4 GB for l16.
MAX_NUM_CLASSES = 1_000_000


def _block_shapes(c):
    """One block's tensors: key suffix -> shape (the same for every block), in timm's order."""
    return {"norm1.weight": (c.embed_dim,), "norm1.bias": (c.embed_dim,),
            "mlp_tokens.fc1.weight": (c.tokens_dim, c.num_patches), "mlp_tokens.fc1.bias": (c.tokens_dim,),
            "mlp_tokens.fc2.weight": (c.num_patches, c.tokens_dim), "mlp_tokens.fc2.bias": (c.num_patches,),
            "norm2.weight": (c.embed_dim,), "norm2.bias": (c.embed_dim,),
            "mlp_channels.fc1.weight": (c.channels_dim, c.embed_dim), "mlp_channels.fc1.bias": (c.channels_dim,),
            "mlp_channels.fc2.weight": (c.embed_dim, c.channels_dim), "mlp_channels.fc2.bias": (c.embed_dim,)}


def _outer_shapes(c):
    """The tensors outside the blocks: stem, final norm, head (when there is one)."""
    shapes = {"stem.proj.weight": (c.embed_dim, c.in_chans, c.patch_size, c.patch_size),
              "stem.proj.bias": (c.embed_dim,), "norm.weight": (c.embed_dim,), "norm.bias": (c.embed_dim,)}
    if c.num_classes:
        shapes.update({"head.weight": (c.num_classes, c.embed_dim), "head.bias": (c.num_classes,)})
    return shapes


def _expected_items(c):
    """(key, shape) for every tensor of a config, in timm's order, one at a time."""
    outer, block = _outer_shapes(c), _block_shapes(c)
    yield from list(outer.items())[:2]
    for i in range(c.depth):
        for suffix, shape in block.items():
            yield f"blocks.{i}.{suffix}", shape
    yield from list(outer.items())[2:]


def expected_shapes(config):
    """timm's state-dict keys and shapes for a config, in timm's order."""
    return dict(_expected_items(config))


def _name(key, limit=80):
    """A key for a message: quoted, and cut short if a hostile file made it huge."""
    text = repr(key)
    return text if len(text) <= limit else text[:limit] + f"... ({len(key):,} characters)"


_TRANSPOSED = "; is it transposed? timm stores a Linear weight as (out, in)"


def _transposed(shape, want):
    """A hint for a 2-D weight stored (in, out) instead of timm's (out, in)."""
    return _TRANSPOSED if len(shape) == 2 and shape[::-1] == want else ""


def infer_config(state_dict, source="checkpoint"):
    """Read the architecture off the tensors' shapes; every other key is then checked against it.

    state_dict: {key: anything with .shape and .dtype} (arrays, or the header entries of a file).
    """
    def shape(key):
        if key not in state_dict:
            raise MixerError(f"{source}: missing tensor {key!r}; is this a timm MLP-Mixer checkpoint?")
        return tuple(state_dict[key].shape)

    def matrix(key):
        if len(shape(key)) != 2 or 0 in shape(key):
            raise MixerError(f"{source}: {key!r} has shape {shape(key)}, expected a matrix (out, in)")
        return shape(key)

    stem = shape("stem.proj.weight")
    if len(stem) != 4 or stem[2] != stem[3] or 0 in stem:
        raise MixerError(f"{source}: 'stem.proj.weight' has shape {stem}, expected (C, 3, P, P)")
    embed_dim, in_chans, patch_size, _ = stem
    if in_chans != 3:  # preprocessing makes RGB images; say so now, not as an input-shape error later
        raise MixerError(f"{source}: 'stem.proj.weight' has shape {stem}: a model of {in_chans}-channel images; "
                         "numpy_mixer runs RGB (3-channel) Mixers only")
    # the blocks present: indices 0, 1, 2 ... without a gap (strings: a hostile index may have 5000 digits)
    block_ids = {m.group(1) for k in state_dict if (m := re.match(r"blocks\.([0-9]+)\.", k))}
    depth = 0
    while str(depth) in block_ids:
        depth += 1
    if depth == 0:
        raise MixerError(f"{source}: no 'blocks.0.*' tensors; is this a timm MLP-Mixer checkpoint?")
    later = sorted((b for b in block_ids if not (len(b) < 10 and int(b) < depth)), key=lambda b: (len(b), b))
    if later:  # blocks past a gap: the gap is what is wrong, not the blocks after it
        raise MixerError(f"{source}: missing tensors 'blocks.{depth}.*', though the checkpoint has "
                         f"{_name(f'blocks.{later[0]}.*')}; a timm Mixer numbers its blocks 0, 1, 2 ... without a gap")
    tokens_dim, num_patches = matrix("blocks.0.mlp_tokens.fc1.weight")
    bias = state_dict.get("blocks.0.mlp_tokens.fc1.bias")
    if bias is not None and tuple(bias.shape) == (num_patches,) != (tokens_dim,):  # its bias says (out,) = (N,)
        raise MixerError(f"{source}: 'blocks.0.mlp_tokens.fc1.weight' has shape {(tokens_dim, num_patches)} and its "
                         f"bias {(num_patches,)}{_TRANSPOSED}")
    channels = matrix("blocks.0.mlp_channels.fc1.weight")
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        square = math.isqrt(tokens_dim) ** 2 == tokens_dim
        raise MixerError(f"{source}: 'blocks.0.mlp_tokens.fc1.weight' has shape {(tokens_dim, num_patches)}: it mixes "
                         f"{num_patches} tokens, which is not a square grid of patches"
                         + (_TRANSPOSED if square else ""))
    if channels[1] != embed_dim:
        raise MixerError(f"{source}: 'blocks.0.mlp_channels.fc1.weight' has shape {channels}, expected (hidden, "
                         f"{embed_dim}) for width {embed_dim}" + _transposed(channels, (channels[1], embed_dim)))
    channels_dim = channels[0]
    if "head.bias" in state_dict and "head.weight" not in state_dict:
        raise MixerError(f"{source}: missing tensor 'head.weight' (the checkpoint has 'head.bias' of shape "
                         f"{tuple(state_dict['head.bias'].shape)})")
    num_classes = 0
    if "head.weight" in state_dict:
        head = matrix("head.weight")
        if head[1] != embed_dim:
            raise MixerError(f"{source}: 'head.weight' has shape {head}, expected (classes, {embed_dim}) for width "
                             f"{embed_dim}" + _transposed(head, (head[1], embed_dim)))
        num_classes = head[0]
    return MixerConfig(patch_size, grid * patch_size, in_chans, embed_dim, depth, tokens_dim, channels_dim,
                       num_classes)


def check_state_dict(state_dict, config, source="checkpoint"):
    """Every key present, none extra, every shape as expected, floating point; else one clear error.

    Works on {key: anything with .shape and .dtype}; never builds more than len(state_dict) entries,
    so a file with a million bogus keys fails as fast as it is read.
    """
    outer, block = _outer_shapes(config), _block_shapes(config)

    def expected(key):
        if key in outer:
            return True
        m = re.fullmatch(r"blocks\.(0|[1-9][0-9]{0,8})\.(.+)", key, re.DOTALL)
        return bool(m) and int(m.group(1)) < config.depth and m.group(2) in block

    extra = [k for k in state_dict if not expected(k)]
    missing = len(outer) + len(block) * config.depth - (len(state_dict) - len(extra))
    if missing:
        key, want = next((k, s) for k, s in _expected_items(config) if k not in state_dict)
        raise MixerError(f"{source}: missing tensor {key!r} (expected shape {want})"
                         + (f" and {missing - 1:,} more" if missing > 1 else ""))
    if extra:
        raise MixerError(f"{source}: unexpected tensor {_name(extra[0])} with shape {tuple(state_dict[extra[0]].shape)}"
                         + (f" and {len(extra) - 1:,} more" if len(extra) > 1 else "")
                         + "; this is not a timm MLP-Mixer checkpoint of a known layout")
    for key, want in expected_shapes(config).items():
        found = tuple(state_dict[key].shape)
        if found != want:
            raise MixerError(f"{source}: tensor {key!r} has shape {found}, expected {want} "
                             f"for {config.depth} blocks of width {config.embed_dim}" + _transposed(found, want))
        if state_dict[key].dtype.kind != "f":
            raise MixerError(f"{source}: tensor {key!r} has dtype {state_dict[key].dtype}, expected floating point")


def check_finite(state_dict, source="checkpoint"):
    """No NaN or Inf in any weight: a corrupt file would otherwise give NaN logits, not an error."""
    for key, array in state_dict.items():
        # a sum is finite when every value is (float32 weights cannot overflow a float64 sum)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: the error below says it, not a warning
            total = np.sum(array, dtype=np.float64)
        if not np.isfinite(total) and not np.isfinite(array).all():
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise MixerError(f"{source}: tensor {_name(key)} has {bad:,} NaN or infinite values of {array.size:,}; "
                             "a corrupt checkpoint (download or export it again) or a training run that diverged")


def check_architecture(config, name, num_classes):
    """A checkpoint fetched for a timm name must have that name's architecture."""
    arch = name.split(".")[0]
    if arch in ARCHITECTURES:
        want = dataclasses.replace(ARCHITECTURES[arch], num_classes=num_classes)
        if config != want:
            raise MixerError(f"{name}: the downloaded checkpoint has {config}, expected {want}; delete it from "
                             "the Hugging Face cache and download it again")


# What read_safetensors knows of a tensor before it makes the array: its shape and the dtype it loads as.
TensorSpec = collections.namedtuple("TensorSpec", "shape dtype")


@dataclass(frozen=True)
class MappedFile:
    """A memory-mapped checkpoint as it was when read: check() fails if it has been changed in place.

    A mapped file that is truncated kills the process with SIGBUS when a lost page is touched, and
    one that is rewritten changes the weights silently; a file deleted or replaced by a new one (a
    rename, as downloads do) is harmless, because the mapping keeps the old file's pages.
    """
    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int

    def check(self):
        """MixerError if the file was modified in place since it was read; costs one stat."""
        try:
            st = os.stat(self.path)
        except OSError:
            return  # deleted or moved away: the mapping still holds the old file
        if (st.st_dev, st.st_ino) == (self.device, self.inode) and (st.st_size, st.st_mtime_ns) != (self.size,
                                                                                                  self.mtime_ns):
            raise MixerError(f"{self.path}: the checkpoint was changed on disk after it was loaded (it is "
                             "memory-mapped, so its weights would change too); load the model again")


class Tensors(dict):
    """read_safetensors' result: {key: array}, .mapped_file, the file the arrays are views of, and .metadata,
    the header's __metadata__ ({} where it has none)."""
    mapped_file = None
    metadata = None


def _unique_keys(pairs):
    """object_pairs_hook for the header: a duplicate key is an error (json.loads would keep the last)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {_name(key)}")
            seen.add(key)
    return obj


def _valid_unicode(texts):
    """JSON's \\ud800 escapes decode to lone surrogates in Python; the crate (and UTF-8) refuses them."""
    try:
        for text in texts:
            text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"invalid Unicode escape (a lone surrogate) in {_name(text)}") from None


def _parse_int(text):
    if len(text.lstrip("-")) > 20:  # 2**64 has 20 digits: keep Python from converting 5000-digit numbers
        raise ValueError(f"a {len(text)}-digit integer")
    return int(text)


def _no_float(text):
    raise ValueError(f"the number {text[:30]} (sizes and offsets are integers)")


def _parse_header(raw, path, data_len):
    """The header bytes -> ([(key, dtype name, shape, start, end)], __metadata__ or {}), each checked; else a
    MixerError.

    The checks are the safetensors crate's (valid UTF-8 JSON, known fields, integer sizes, tensors that
    are contiguous, do not overlap and cover the data section exactly), plus unique keys and a cap on
    the sizes NumPy can hold. Shape products are Python ints, so they cannot overflow.
    """
    def corrupt(why):
        return MixerError(f"{path}: corrupt safetensors header ({why}); the file is damaged or not a safetensors file")

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_int=_parse_int,
                            parse_float=_no_float, parse_constant=_no_float)
    except UnicodeDecodeError as e:
        raise corrupt(f"not UTF-8: {e.reason} at byte {e.start}") from None
    except RecursionError:
        raise corrupt("JSON nested too deeply") from None
    except ValueError as e:  # bad JSON, a duplicate key, NaN, a huge number
        raise corrupt(first_line(e)) from None
    if not isinstance(header, dict):
        raise corrupt("not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise corrupt("'__metadata__' must map strings to strings")
    try:  # the only strings that get past the checks below: tensor names and metadata
        _valid_unicode([*header, *(metadata or {}), *(metadata or {}).values()])
    except ValueError as e:
        raise corrupt(str(e)) from None
    entries = []
    for key, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise corrupt(f"the entry for {_name(key)} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
                and all(type(v) is int and 0 <= v < 2**64 for v in shape + offsets)):
            raise corrupt(f"{_name(key)} needs a shape and two data_offsets of integers from 0 to 2**64 - 1")
        if dtype not in _DTYPES:
            shown = dtype if isinstance(dtype, str) and re.fullmatch(r"\w{1,20}", dtype) else _name(dtype, 30)
            raise MixerError(f"{path}: tensor {_name(key)} has dtype {shown}; only F32, F64, F16 and BF16 "
                             "weights can be used")
        if len(shape) > _MAX_NDIM:
            raise MixerError(f"{path}: tensor {_name(key)} has {len(shape)} axes; NumPy holds at most {_MAX_NDIM}")
        itemsize = _DTYPES[dtype][0].itemsize
        start, end = offsets
        if end - start != math.prod(shape) * itemsize:
            raise MixerError(f"{path}: tensor {_name(key)} of shape {tuple(shape)} and dtype {dtype} needs "
                             f"{math.prod(shape) * itemsize:,} bytes, but its data_offsets [{start}, {end}] "
                             f"hold {end - start:,}; the file is corrupt")
        if math.prod(d for d in shape if d) * itemsize >= 2**62:  # NumPy refuses such a shape even when empty
            raise MixerError(f"{path}: tensor {_name(key)} has shape {tuple(shape)}, too large for NumPy")
        entries.append((key, dtype, tuple(shape), start, end))
    position = 0  # as the crate: sorted by offsets, each tensor starts where the one before ends
    for key, _, _, start, end in sorted(entries, key=lambda e: (e[3], e[4])):
        if start != position:
            how = "overlaps the tensor before it" if start < position else f"leaves a gap of {start - position:,} bytes"
            raise MixerError(f"{path}: tensor {_name(key)} at data offset {start:,} {how}; tensors must be "
                             "contiguous and must not overlap: the file is corrupt")
        position = end
    if position != data_len:
        how = "truncated or corrupt" if position > data_len else "corrupt"
        raise MixerError(f"{path}: {how}: the tensors take {position:,} bytes, the file holds {data_len:,} after the "
                         "header; download or export it again")
    return entries, metadata or {}


def read_safetensors(path, check=None):
    """{key: array} from a .safetensors file, memory-mapped once (float16/bfloat16 become float32 copies).

    The header is validated completely before any array is made; check, if given, is called with
    {key: TensorSpec(shape, dtype)} before the file is mapped, and raises to refuse it (load_model
    checks the Mixer's key names and shapes there). Every tensor is a view into one map of the file,
    so a model holds one file descriptor, not one per tensor.
    """
    path = os.fspath(path)
    if path.lower().endswith(_PICKLE_SUFFIXES):
        raise MixerError(f"{path}: refusing to load a pickled checkpoint (unpickling can run arbitrary code); "
                         "convert it to .safetensors first, e.g. with safetensors.torch.save_file")
    with open_regular(path, "safetensors file") as f:
        st = os.fstat(f.fileno())
        size = st.st_size
        if size < 8:
            raise MixerError(f"{path}: not a safetensors file (only {size} bytes) - download or export it again")
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            raise MixerError(f"{path}: not a safetensors file, or truncated (header length {header_len:,} "
                             f"in a file of {size:,} bytes) - download or export it again")
        if header_len > MAX_HEADER_BYTES:
            raise MixerError(f"{path}: the safetensors header is {header_len:,} bytes, over this reader's limit of "
                             f"{MAX_HEADER_BYTES:,} (a Mixer's header is about 30 KB); not a Mixer checkpoint")
        raw = f.read(header_len)
        data_start = 8 + header_len
        entries, metadata = _parse_header(raw, path, size - data_start)
        if check is not None:
            check({key: TensorSpec(shape, _LOADS_AS[dtype]) for key, dtype, shape, _, _ in entries})
        mapped = MappedFile(os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        try:  # one map of the whole file, shared by every tensor (np.memmap of a view keeps it alive)
            data = np.memmap(f, dtype=np.uint8, mode="r", shape=(size,)) if size > data_start else None
        except (ValueError, OSError) as e:  # the file shrank since it was measured
            raise MixerError(f"{path}: the file changed while it was being read ({e})") from None
        if data is not None:  # which file this map is: worker processes map it again (numpy_mixer.processes)
            data.mapped_file = mapped
    tensors = Tensors()
    tensors.mapped_file, tensors.metadata = mapped, metadata
    for key, dtype, shape, start, end in entries:
        raw_dtype = _DTYPES[dtype][0]
        if start == end:
            array = np.zeros(shape, _DTYPES[dtype][1])
        else:
            array = data[data_start + start: data_start + end].view(raw_dtype).reshape(shape)
        if dtype == "BF16":  # bfloat16 is the top half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        elif dtype == "F16":
            array = array.astype(np.float32)
        elif not array.flags.aligned:  # offsets that no safetensors writer makes: copy, for fast matmuls
            array = np.array(array)
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
    if os.path.lexists(text) or text.lower().endswith((".safetensors",) + _PICKLE_SUFFIXES):
        return text, None  # a link that leads nowhere (or in a loop) is a file that the reader names as such
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
                raise MixerError(f"{name} has no pretrained weights in timm - pass a local .safetensors file "
                                 f"(--weights FILE), e.g. random ones to try it: numpy-mixer random-checkpoint "
                                 f"{name} {name}.safetensors")
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

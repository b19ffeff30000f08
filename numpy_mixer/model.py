"""A thin model object: timm's method names over the layer functions and a checked state dict."""
import contextlib
import os

import numpy as np

from . import layers
from .errors import MixerError, first_line
from .weights import (DEFAULT_MODEL, DEFAULT_PREPROCESSING, LABEL_SETS_BY_CLASSES, MAX_NUM_CLASSES,
                      check_architecture, check_finite, check_state_dict, infer_config, read_safetensors, resolve)


def nest(state_dict):
    """timm's flat keys -> nested params: {"blocks": [{"norm1": {"weight": ...}, ...}], ...}."""
    params = {}
    for key, value in state_dict.items():
        *path, leaf = key.split(".")
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    if "blocks" in params:  # {"0": ..., "1": ...} -> a list, in block order
        params["blocks"] = [params["blocks"][str(i)] for i in range(len(params["blocks"]))]
    return params


def flatten(params, prefix=""):
    """Nested params -> timm's flat keys (the inverse of nest)."""
    if isinstance(params, np.ndarray):
        return {prefix[:-1]: params}
    items = enumerate(params) if isinstance(params, list) else params.items()
    flat = {}
    for name, value in items:
        flat.update(flatten(value, f"{prefix}{name}."))
    return flat


class MlpMixer:
    """An MLP-Mixer with timm's interface: model(x), forward_features, forward_head.

    params: nested dict of arrays keyed as timm's state dict; config: MixerConfig;
    pretrained_cfg: preprocessing (mean, std, interpolation, crop_pct) and label set.
    """

    def __init__(self, state_dict, pretrained_cfg=None, source="checkpoint"):
        self.config = infer_config(state_dict, source)
        check_state_dict(state_dict, self.config, source)
        check_finite(state_dict, source)
        # read_safetensors' arrays are views of a memory-mapped file: each forward checks it is unchanged
        self.mapped_file = getattr(state_dict, "mapped_file", None)
        self.metadata = dict(getattr(state_dict, "metadata", None) or {})  # the file's __metadata__, if any
        self.params = nest(state_dict)
        cfg = dict(DEFAULT_PREPROCESSING, name=source, labels=LABEL_SETS_BY_CLASSES.get(self.config.num_classes))
        cfg.update(pretrained_cfg or {})
        cfg.update(num_classes=self.config.num_classes, input_size=(self.config.in_chans,) + (self.config.img_size,) * 2)
        self.pretrained_cfg = cfg

    @property
    def num_classes(self):
        return self.config.num_classes

    @property
    def num_features(self):
        return self.config.embed_dim

    def state_dict(self):
        """timm's flat {key: array}."""
        return flatten(self.params)

    def num_params(self):
        return sum(a.size for a in self.state_dict().values())

    def _check_input(self, x):
        x = np.asarray(x)
        want = tuple(self.pretrained_cfg["input_size"])  # (3, H, W)
        expected = f"expected (B, {', '.join(map(str, want))})"
        channels_last = want[1:] + want[:1]  # (H, W, 3)
        if x.shape == want:
            raise MixerError(f"input has shape {x.shape}, {expected} - add a batch axis: x[None]")
        if x.shape == channels_last:
            raise MixerError(f"input has shape {x.shape}, {expected} - it is channels-last: x.transpose(2, 0, 1)[None]")
        if x.ndim == 4 and x.shape[1:] == channels_last:
            raise MixerError(f"input has shape {x.shape}, {expected} - it is channels-last: x.transpose(0, 3, 1, 2)")
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise MixerError(f"input has shape {x.shape}, {expected} - model.preprocess(img) makes one image's "
                             f"{want} from a file, PIL image or array")
        if x.dtype not in (np.float32, np.float64):
            raise MixerError(f"input has dtype {x.dtype}, expected float32 - model.preprocess(img) makes it from "
                             "an image")
        # before reading it: a broadcast view can declare a batch no machine could run, in a few bytes
        tokens_bytes = len(x) * self.config.num_patches * self.config.embed_dim * x.itemsize  # the output alone
        if tokens_bytes > _physical_memory():
            raise MixerError(f"input of shape {x.shape}: a batch of {len(x):,} images needs over "
                             f"{tokens_bytes / 2**30:,.1f} GiB for its tokens alone, more than this machine's "
                             f"{_physical_memory() / 2**30:,.1f} GiB - pass fewer at a time (predict and embed take "
                             "any number and batch them)")
        bad = _count_nonfinite(x)
        if bad:
            raise MixerError(f"input of shape {x.shape} has {bad:,} NaN or infinite values; the logits would all be "
                             "NaN - check how it was made")
        if self.mapped_file is not None:
            self.mapped_file.check()
        return x

    def forward_features(self, x, fast=True):
        """Normalised tokens after the last block and the final norm. [B, 3, H, W] -> [B, N, C]

        fast=True runs numpy_mixer.fast (float32 weights; float64 ones take the readable path);
        fast=False runs the readable layer functions of numpy_mixer.layers.
        """
        x = self._cast(self._check_input(x))
        with _batch_memory(x):
            tokens = self._features(x, fast)
        _check_overflow(tokens, x, "the forward pass")
        return tokens

    def _features(self, x, fast=True):
        """forward_features on a checked input, unchecked output (an overflow gives non-finite values)."""
        p = self.params
        if len(x) == 0:  # an empty batch gives empty outputs, as in timm
            return np.zeros((0, self.config.num_patches, self.config.embed_dim), self.dtype)
        with np.errstate(over="ignore", invalid="ignore"):  # the callers report an overflow, in one line
            if fast and self.dtype == np.float32:
                from . import fast as fast_path
                return fast_path.forward_features(x, p, self.config.patch_size)
            # one image at a time: images do not interact, and a big batch's [B, N, H] temporaries fall out
            # of cache (per image, B=16 took twice as long as B=1); layers.py stays the plain batched maths
            return np.concatenate([layers.forward_features(x[i:i + 1], p["stem"], p["blocks"], p["norm"],
                                                           self.config.patch_size) for i in range(len(x))])

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False, output_fmt="NCHW",
                              intermediates_only=False):
        """timm's MlpMixer.forward_intermediates: the tokens after chosen blocks (readable path).

        indices: None for every block, an int n for the last n, or a list of block indices (negative
        ones count from the end); norm: apply the final norm to each; stop_early: run no block past the
        last one asked for (the returned features are then that block's, normalised, as in timm);
        output_fmt: "NCHW" ([B, C, G, G], the tokens back on their grid) or "NLC" ([B, N, C]).
        Returns the list of intermediates if intermediates_only, else (features [B, N, C], intermediates).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise MixerError(f"output_fmt={output_fmt!r}; use 'NCHW' ([B, C, H, W]) or 'NLC' ([B, N, C])")
        x = self._cast(self._check_input(x))
        take = take_indices(self.config.depth, indices)
        p = self.params
        blocks = p["blocks"][:max(take) + 1] if stop_early else p["blocks"]
        with np.errstate(over="ignore", invalid="ignore"), _batch_memory(x):  # an overflow: reported below
            features, intermediates = layers.forward_intermediates(x, p["stem"], blocks, p["norm"], take, norm,
                                                                   self.config.patch_size)
        _check_overflow(features, x, "the forward pass")
        if output_fmt == "NCHW":
            G = self.config.img_size // self.config.patch_size
            # tokens are numbered row by row: [B, N, C] -> [B, G, G, C] -> [B, C, G, G]
            intermediates = [y.reshape(len(y), G, G, -1).transpose(0, 3, 1, 2) for y in intermediates]
        return intermediates if intermediates_only else (features, intermediates)

    def forward_head(self, x, pre_logits=False):
        """Pool the tokens and apply the head. [B, N, C] -> [B, K] (or [B, C] with pre_logits)

        Any number of tokens N, as timm (they are averaged); float32 or float64, finite.
        """
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[-1] != self.config.embed_dim:
            raise MixerError(f"forward_head takes tokens [B, N, C] with C = {self.config.embed_dim} (the output of "
                             f"forward_features), got shape {x.shape}")
        if x.dtype not in (np.float32, np.float64):
            raise MixerError(f"forward_head takes float32 tokens (the output of forward_features), got {x.dtype}")
        if x.shape[1] == 0 and len(x):
            raise MixerError(f"forward_head got tokens of shape {x.shape}: no tokens to pool")
        bad = _count_nonfinite(x)
        if bad:
            raise MixerError(f"tokens of shape {x.shape} have {bad:,} NaN or infinite values; the logits would be NaN "
                             "- check how they were made")
        return self._head(self._cast(x), pre_logits)

    def _head(self, tokens, pre_logits=False):
        x = layers.global_pool(tokens)  # [B, N, C] -> [B, C]
        if pre_logits or "head" not in self.params:
            return x
        from . import fast as fast_path

        with fast_path.one_blas_thread():  # a small matmul; on more threads, BLAS's threads would spin after it
            return layers.head(x, **self.params["head"])

    def outputs_by_row(self, x, pre_logits=False):
        """model(x) (pre_logits: the pooled features) for a batch of separate images, as predict and embed run
        it: an image whose pass overflows float32 gets a non-finite row, for the caller to report that image
        alone, where model(x) raises for the whole batch. [B, 3, H, W] -> [B, K] (or [B, C])"""
        x = self._cast(self._check_input(x))
        with np.errstate(over="ignore", invalid="ignore"), _batch_memory(x):
            return self._head(self._features(x), pre_logits)

    def __call__(self, x, fast=True):
        """Logits. [B, 3, H, W] -> [B, K] (pooled features [B, C] when num_classes=0); fast as in forward_features"""
        return self.forward_head(self.forward_features(x, fast=fast))

    def _cast(self, x):
        # weights decide the precision: float32 weights take float32 input (never a silent upcast)
        return x.astype(self.dtype, copy=False)

    @property
    def dtype(self):
        return self.params["norm"]["weight"].dtype

    def astype(self, dtype):
        """A copy of the model with every weight in dtype (float64 for a high-precision reference run)."""
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise MixerError(f"astype({dtype!r}): not a NumPy dtype; use np.float32 or np.float64") from None
        if dtype not in (np.float32, np.float64):  # erf and the fast path exist in these two only
            raise MixerError(f"astype({dtype}): a model runs in float32 or float64 only")
        state = {k: np.asarray(v, dtype) for k, v in self.state_dict().items()}
        copy = MlpMixer(state, self.pretrained_cfg, self.pretrained_cfg["name"])
        copy.metadata = dict(self.metadata)  # random weights stay marked as such
        return copy

    def reset_classifier(self, num_classes):
        """A new head with num_classes outputs, zero-initialised as timm does; 0 removes the head."""
        _check_num_classes(num_classes)
        self.params.pop("head", None)
        if num_classes:
            C = self.config.embed_dim
            self.params["head"] = {"weight": np.zeros((num_classes, C), self.dtype),
                                   "bias": np.zeros((num_classes,), self.dtype)}
        self.config = infer_config(self.state_dict())
        self.pretrained_cfg.update(num_classes=num_classes, labels=LABEL_SETS_BY_CLASSES.get(num_classes))

    def save_pretrained(self, folder):
        """Write model.safetensors and config.json as timm.models.save_for_hf does, for
        timm.create_model("local-dir:folder", pretrained=True) or a hub upload (huggingface_hub.upload_folder)."""
        import json
        import os

        from .checkpoint import save_checkpoint
        from .hub import CONFIG_NAME, WEIGHTS_NAME, timm_config

        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        config = timm_config(self.config, self.pretrained_cfg)
        save_checkpoint(self.state_dict(), os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt"})
        with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        return folder

    def preprocess(self, img):
        """A path, PIL image or HWC uint8 array -> the (3, H, W) float32 input this model expects."""
        from .preprocess import preprocess
        return preprocess(img, self.pretrained_cfg)

    def __repr__(self):
        c = self.config
        return (f"MlpMixer({self.pretrained_cfg['name']!r}: patch {c.patch_size}, {c.img_size}px, {c.depth} blocks, "
                f"width {c.embed_dim}, token MLP {c.tokens_dim}, channel MLP {c.channels_dim}, "
                f"{c.num_classes} classes, {self.num_params():,} params)")


def take_indices(num_blocks, indices=None):
    """timm's feature_take_indices: None -> every block, int n -> the last n, list -> those (negative from the end)."""
    if indices is None:
        indices = num_blocks
    if isinstance(indices, np.ndarray) and indices.ndim == 0:  # np.array(3): the int it holds
        indices = indices.item()
    whole = (int, np.integer)
    if isinstance(indices, bool) or not (isinstance(indices, whole) or (
            isinstance(indices, (list, tuple, range, np.ndarray)) and all(
                isinstance(i, whole) and not isinstance(i, bool) for i in indices))):
        raise MixerError(f"indices={indices!r}: pass None (every block), an int n (the last n) or a list of "
                         "block indices")
    if isinstance(indices, whole):
        if not 0 < indices <= num_blocks:
            raise MixerError(f"indices={indices}: the last n blocks needs 1 <= n <= {num_blocks} (the model's depth)")
        return [num_blocks - indices + i for i in range(indices)]
    take = []
    for i in indices:
        index = num_blocks + i if i < 0 else i
        if not 0 <= index < num_blocks:
            raise MixerError(f"block index {i} is out of range: the model has blocks 0 to {num_blocks - 1}")
        take.append(int(index))
    if not take:
        raise MixerError("indices is empty: pass None (every block), an int n (the last n) or a list of block indices")
    return take


def load_model(name_or_path=DEFAULT_MODEL, num_classes=None):
    """A timm Mixer by name (from the Hugging Face hub or its cache) or from a local .safetensors file.

    Names as timm's: a pretrained tag, hf-hub:owner/repo[@revision], local-dir:/folder or a folder
    (timm's config.json and model.safetensors; see numpy_mixer.hub), "digits" (shipped).

    num_classes: None keeps the checkpoint's head; 0 drops it (the model returns pooled features);
    any other number puts a fresh zero head of that size, as timm does.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise MixerError(f"load_model takes a timm model name or a path to a .safetensors file, not "
                         f"{type(name_or_path).__name__}")
    if "\0" in os.fsdecode(name_or_path):
        raise MixerError(f"{os.fsdecode(name_or_path)!r}: a model name or path cannot contain a NUL character")
    if num_classes is not None:
        _check_num_classes(num_classes)
    path, pretrained_cfg = resolve(name_or_path)
    source = pretrained_cfg["name"] if pretrained_cfg else str(path)

    def check(specs):  # the key names and shapes, from the header, before any array is made
        check_state_dict(specs, infer_config(specs, source), source)

    model = MlpMixer(read_safetensors(path, check=check), pretrained_cfg, source)
    if pretrained_cfg and "architecture" in pretrained_cfg:  # from timm's config.json (numpy_mixer.hub)
        from .hub import check_config
        check_config(model.config, pretrained_cfg, source)
    if pretrained_cfg and "num_classes" in pretrained_cfg:
        check_architecture(model.config, source, pretrained_cfg["num_classes"])
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model


def _physical_memory():
    """This machine's memory in bytes (infinite where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return float("inf")


@contextlib.contextmanager
def _batch_memory(x):
    """A MemoryError in a forward pass (a batch far larger than memory fails at its first allocation) -> one line."""
    try:
        yield
    except MemoryError as e:
        raise MixerError(f"input of shape {x.shape}: not enough memory for a batch of {len(x):,} images "
                         f"({first_line(e)}) - pass fewer at a time (predict and embed take any number and batch "
                         "them)") from None


def _count_nonfinite(a, chunk_elems=1 << 22):
    """How many values of a are NaN or infinite, in chunks along the first axis: no temporary the size of a
    (a batch of 10k images would take a 1.5 GB boolean mask; a broadcast view, any size it declares)."""
    if a.ndim == 0:
        return int(not np.isfinite(a))
    if a.size == 0:
        return 0
    step = max(1, chunk_elems // max(1, a[0].size))
    return sum(int(np.count_nonzero(~np.isfinite(a[i:i + step]))) for i in range(0, len(a), step))


def _check_overflow(out, x, what):
    """A MixerError if finite input x gave non-finite values: float32 overflowed (a huge input or weights)."""
    bad = _count_nonfinite(out)
    if bad:
        magnitude = max(-float(x.min()), float(x.max())) if x.size else 0.0
        raise MixerError(f"{what} overflowed {out.dtype} ({bad:,} NaN or infinite "
                         f"values from an input of magnitude up to {magnitude:.3g}): the model expects images "
                         "normalised as model.preprocess makes them, within a few units; check the input and weights")


def _check_num_classes(num_classes):
    if (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
            or not 0 <= num_classes <= MAX_NUM_CLASSES):
        raise MixerError(f"num_classes must be a whole number from 0 (no head) to {MAX_NUM_CLASSES:,}, "
                         f"not {num_classes!r}")

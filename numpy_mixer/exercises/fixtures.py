"""The golden fixtures: seeded inputs (NumPy only) and timm's outputs on them (saved, shipped).

Keys are "<exercise>/<case>/<name>", e.g. "layer_norm/small/x", "token_mixing/b16/out"; nested
weights keep timm's key names after the case ("token_mixing/small/mlp_tokens.fc1.weight"). The backward
exercises keep their weights under "p/" and one answer per gradient ("linear_backward/f64/p/weight",
"linear_backward/f64/dweight"); the cost exercise one count per key ("cost/b16/params").
The full-size mixer_b16 weights are not shipped: they are regenerated from a seed with
numpy_mixer.checkpoint.random_state_dict (NumPy's PCG64), and their SHA-256 is stored in the
fixture file's metadata so that a change in NumPy's random stream is caught, not silently used.
Regenerate everything from timm with: python tools/make_exercise_fixtures.py (writes FIXTURE_FILES)
"""
import hashlib
import os
from functools import lru_cache

import numpy as np

from ..checkpoint import config_for, random_state_dict
from ..errors import MixerError
from ..model import nest
from ..weights import MixerConfig

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "fixtures")
# two files, so that the small one can be remade without touching the large one (git keeps every version)
FIXTURE_FILES = ("small.safetensors", "full_size.safetensors",  # full size: the mixer_b16 block, the photos
                 "backward.safetensors")  # the backward exercises (float64 and float32) and the cost counts


def _file_for(key):
    if key.split("/", 1)[0].endswith("_backward") or key.startswith("cost/"):
        return FIXTURE_FILES[2]
    return FIXTURE_FILES[1] if key.startswith("preprocess/") or "/b16/" in key else FIXTURE_FILES[0]

# The full-size block: mixer_b16_224's stem and first block, seeded; no head (num_classes=0).
B16_CONFIG = config_for("mixer_b16_224", depth=1, num_classes=0)
B16_SEED = 16
# Small seeded models: "small" has N != C so every axis mix-up shows; "square" has N == C == 16, so that
# the mix-ups that raise a shape error elsewhere run, and their numbers show which mistake it is.
SMALL = MixerConfig(patch_size=4, img_size=16, in_chans=3, embed_dim=24, depth=1, tokens_dim=12, channels_dim=96,
                    num_classes=0)  # N = 16, C = 24
SQUARE = MixerConfig(patch_size=4, img_size=16, in_chans=3, embed_dim=16, depth=1, tokens_dim=8, channels_dim=64,
                     num_classes=0)  # N = C = 16
# the backward exercises' blocks: a narrower channel MLP (H = 2C) keeps the float64 and float32 fixtures small
BACKWARD_SMALL = MixerConfig(patch_size=4, img_size=16, in_chans=3, embed_dim=24, depth=1, tokens_dim=12,
                             channels_dim=48, num_classes=0)  # N = 16, C = 24
BACKWARD_SQUARE = MixerConfig(patch_size=4, img_size=16, in_chans=3, embed_dim=16, depth=1, tokens_dim=8,
                              channels_dim=32, num_classes=0)  # N = C = 16
TINY_MODEL = MixerConfig(patch_size=8, img_size=32, in_chans=3, embed_dim=32, depth=2, tokens_dim=16, channels_dim=128,
                         num_classes=10)  # the whole-model exercise: N = 16, C = 32, K = 10


def _flat(prefix, params):
    """Nested params -> {"prefix/key.sub": array}."""
    from ..model import flatten
    return {f"{prefix}/{k}": v for k, v in flatten(params).items()}


def _picture(rng, height, width):
    """A synthetic uint8 photo: smooth gradients, hard-edged discs and fine texture, so that the
    interpolation and the crop both change the pixels."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / 7 + yy / 11)], axis=-1) * 160
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(10, 50)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def build_inputs():
    """Every input and small weight of every case, seeded: {key: array} (NumPy only, deterministic)."""
    f32 = np.float32
    inputs = {}

    def rng(seed):
        return np.random.default_rng([2105_01601, seed])

    def normal(r, *shape, scale=1.0):
        return (scale * r.standard_normal(shape)).astype(f32)

    r = rng(1)
    inputs["patchify/small/x"] = normal(r, 2, 3, 8, 12)  # a 2 x 3 grid of 4 x 4 patches
    inputs["patchify/square/x"] = normal(r, 1, 3, 16, 16)

    r = rng(2)
    inputs["stem/small/x"] = normal(r, 2, 3, 8, 12)
    stem_small = random_state_dict(MixerConfig(4, 16, 3, 48, 1, 8, 192, 0), seed=21)  # C = 48 = 3*4*4
    inputs["stem/small/proj.weight"], inputs["stem/small/proj.bias"] = (stem_small["stem.proj.weight"],
                                                                       stem_small["stem.proj.bias"])

    r = rng(3)
    # tokens at four scales, some shifted: eps matters for the quiet ones (std 0.003 and 0.03)
    scale = np.array([1.0, 0.03, 3.0, 0.003], f32)[np.arange(16) % 4][None, :, None]
    shift = np.array([0.5, 0.0, -1.0, 0.0], f32)[np.arange(16) % 4][None, :, None]
    inputs["layer_norm/small/x"] = (normal(r, 2, 16, 24) * scale + shift).astype(f32)
    inputs["layer_norm/small/weight"] = (1 + normal(r, 24, scale=0.2)).astype(f32)
    inputs["layer_norm/small/bias"] = normal(r, 24, scale=0.1)

    r = rng(4)
    grid = np.linspace(-6, 6, 1201, dtype=f32)
    inputs["erf/small/x"] = np.concatenate([grid, normal(r, 399, scale=2.0)]).reshape(8, 200)
    r = rng(5)
    grid = np.linspace(-8, 8, 1601, dtype=f32)
    inputs["gelu/small/x"] = np.concatenate([grid, normal(r, 399, scale=3.0)]).reshape(8, 250)

    r = rng(6)
    for case, out_dim in [("small", 16), ("square", 24)]:
        inputs[f"linear/{case}/x"] = normal(r, 2, 5, 24)
        bound = np.sqrt(3 / 24)
        inputs[f"linear/{case}/weight"] = r.uniform(-bound, bound, (out_dim, 24)).astype(f32)
        inputs[f"linear/{case}/bias"] = normal(r, out_dim, scale=0.1)

    r = rng(7)
    mlp_params = nest(random_state_dict(SMALL, seed=71))["blocks"][0]["mlp_channels"]  # 24 -> 96 -> 24
    inputs["mlp/small/x"] = normal(r, 2, 5, 24)
    inputs.update(_flat("mlp/small", mlp_params))

    r = rng(8)
    for case, cfg in [("small", SMALL), ("square", SQUARE)]:
        block = nest(random_state_dict(cfg, seed=81))["blocks"][0]
        N, C = cfg.num_patches, cfg.embed_dim
        for name, keys in [("token_mixing", ("norm1", "mlp_tokens")), ("channel_mixing", ("norm2", "mlp_channels")),
                           ("mixer_block", ("norm1", "mlp_tokens", "norm2", "mlp_channels"))]:
            # some quiet tokens (std 0.02 and 0.005), on which LayerNorm's eps shows
            quiet = np.array([1.0, 0.02, 2.0, 0.005], f32)[np.arange(N) % 4][None, :, None]
            inputs[f"{name}/{case}/x"] = (normal(r, 2, N, C) * quiet).astype(f32)
            inputs.update(_flat(f"{name}/{case}", {k: block[k] for k in keys}))
        inputs[f"global_pool/{case}/x"] = normal(r, 2, N, C) + normal(r, 1, 1, C)  # a mean per channel

    r = rng(9)
    inputs["forward/small/x"] = normal(r, 2, 3, 32, 32)
    inputs.update(_flat("forward/small", nest(random_state_dict(TINY_MODEL, seed=91))))

    r = rng(10)
    inputs["preprocess/landscape/img"] = _picture(r, 180, 240)  # upsampled: shorter side 180 -> 256
    inputs["preprocess/portrait/img"] = _picture(r, 312, 270)  # downsampled; long side 295.82, crop offset 35.5
    inputs.update(build_backward_inputs())
    return inputs


def build_backward_inputs():
    """The backward exercises' inputs: dout, x and weights, each case in float64 ("f64") and float32 ("f32"),
    plus float32 "square" cases (N = C, or in = out) where transposing the wrong way runs."""
    inputs = {}

    def rng(seed):
        return np.random.default_rng([2105_01601, 100 + seed])

    def put(exercise, case, dtype, arrays, params=None):
        for k, v in arrays.items():
            inputs[f"{exercise}/{case}/{k}"] = v.astype(dtype) if v.dtype.kind == "f" else v
        inputs.update({k: v.astype(dtype) for k, v in _flat(f"{exercise}/{case}/p", params or {}).items()})

    seeds = iter(range(1, 100))

    def both(exercise, make, square=None):
        """The same numbers in float64 and in float32; the square case from its own seed."""
        seed = next(seeds)
        for case, dtype in [("f64", np.float64), ("f32", np.float32)]:
            put(exercise, case, dtype, *make(rng(seed)))
        if square:
            put(exercise, "square", np.float32, *square(rng(50 + seed)))

    def linear_case(out_dim):
        def make(r):
            bound = np.sqrt(3 / 24)
            weight = r.uniform(-bound, bound, (out_dim, 24))
            return ({"x": r.standard_normal((2, 5, 24)), "dout": r.standard_normal((2, 5, out_dim))},
                    {"weight": weight, "bias": 0.1 * r.standard_normal(out_dim)})
        return make
    both("linear_backward", linear_case(16), square=linear_case(24))

    def layer_norm_case(r):
        scale = np.array([1.0, 0.5, 2.0, 0.1])[np.arange(16) % 4][None, :, None]
        return ({"x": r.standard_normal((2, 16, 24)) * scale + 0.3, "dout": r.standard_normal((2, 16, 24))},
                {"weight": 1 + 0.2 * r.standard_normal(24), "bias": 0.1 * r.standard_normal(24)})
    both("layer_norm_backward", layer_norm_case)

    both("gelu_backward", lambda r: ({"x": np.concatenate([np.linspace(-6, 6, 601), 2 * r.standard_normal(199)])
                                      .reshape(8, 100), "dout": r.standard_normal((8, 100))}, None))
    both("softmax_cross_entropy_backward",
         lambda r: ({"logits": 2 * r.standard_normal((4, 10)), "labels": np.array([3, 0, 9, 3], np.int64)}, None))

    def block_case(cfg, keys, seed):
        def make(r):
            block = nest(random_state_dict(cfg, seed=seed, dtype=np.float64))["blocks"][0]
            N, C = cfg.num_patches, cfg.embed_dim
            return ({"x": r.standard_normal((2, N, C)), "dout": r.standard_normal((2, N, C))},
                    {k: block[k] for k in keys})
        return make
    tm, cm = ("norm1", "mlp_tokens"), ("norm2", "mlp_channels")
    small, square = BACKWARD_SMALL, BACKWARD_SQUARE
    both("token_mixing_backward", block_case(small, tm, 181), square=block_case(square, tm, 182))
    both("channel_mixing_backward", block_case(small, cm, 183))
    both("mixer_block_backward", block_case(small, tm + cm, 184), square=block_case(square, tm + cm, 185))

    def head_case(r):
        return ({"x": r.standard_normal((2, 16, 24)) + r.standard_normal((1, 1, 24)),
                 "dout": r.standard_normal((2, 10))},
                {"weight": r.uniform(-0.35, 0.35, (10, 24)), "bias": 0.1 * r.standard_normal(10)})
    both("global_pool_head_backward", head_case)
    return inputs


def _digest(arrays):
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


@lru_cache(maxsize=1)
def _b16_weights():
    return random_state_dict(B16_CONFIG, seed=B16_SEED)


def b16_params(expected_digest=None):
    """The full-size stem and block weights, regenerated from the seed; checked against the digest."""
    weights = _b16_weights()
    if expected_digest is not None and _digest(weights) != expected_digest:
        raise MixerError("the regenerated mixer_b16 weights differ from those the fixtures were made with "
                         "(NumPy's random stream changed?); run: python tools/make_exercise_fixtures.py")
    return nest(weights)


class Store:
    """Fixture arrays by key, plus nested weights: store["a/b/x"], store.params("a/b"), store.b16."""

    def __init__(self, arrays, metadata=None):
        self.arrays = arrays
        self.metadata = metadata or {}
        self._b16 = None

    def __getitem__(self, key):
        try:
            return self.arrays[key]
        except KeyError:
            raise MixerError(f"{FIXTURE_DIR}: no fixture {key!r}; run: python tools/make_exercise_fixtures.py") from None

    def __contains__(self, key):
        return key in self.arrays

    def params(self, prefix):
        """Nested {name: {...}} of the weights saved under "prefix/" (not its x and out)."""
        start = prefix + "/"
        return nest({k[len(start):]: v for k, v in self.arrays.items()
                     if k.startswith(start) and k[len(start):] not in ("x", "out")})

    @property
    def b16(self):
        if self._b16 is None:
            self._b16 = b16_params(self.metadata.get("b16_weights_sha256"))
        return self._b16


@lru_cache(maxsize=1)
def load():
    """The shipped fixtures, read once (safetensors: no pickle)."""
    from safetensors import safe_open
    arrays, metadata = {}, {}
    for name in FIXTURE_FILES:
        path = os.path.join(FIXTURE_DIR, name)
        if not os.path.isfile(path):
            raise MixerError(f"{path}: missing; run: python tools/make_exercise_fixtures.py")
        with safe_open(path, framework="numpy") as f:
            arrays.update({k: f.get_tensor(k) for k in f.keys()})
            metadata.update(f.metadata() or {})
    return Store(arrays, metadata)


def build_fixtures():
    """Inputs (seeded) and timm's output for every case, computed now: (arrays, metadata). Needs torch and timm."""
    import timm
    import torch

    from . import catalogue, reference
    store = Store(build_inputs())
    store._b16 = nest(_b16_weights())
    for exercise in catalogue.BUILD_ORDER:
        torch_fn = getattr(reference, exercise.name)
        for case in exercise.cases:
            answer = torch_fn(*case.args(store))
            if exercise.named:  # one array per named output: "<exercise>/<case>/<output>"
                for name, value in exercise.split(answer).items():
                    store.arrays[f"{case.out}/{name}"] = np.array(value, order="C")  # a count stays 0-d
            else:
                store.arrays[case.out] = np.ascontiguousarray(answer)
    metadata = {"b16_weights_sha256": _digest(_b16_weights()), "b16_seed": str(B16_SEED),
                "timm": timm.__version__, "torch": torch.__version__, "numpy": np.__version__,
                "made_by": "tools/make_exercise_fixtures.py"}
    return store.arrays, metadata


def save(arrays, metadata, directory=FIXTURE_DIR):
    """Write the fixtures as safetensors, split in FIXTURE_FILES; returns the paths."""
    from safetensors.numpy import save_file
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name in FIXTURE_FILES:
        part = {k: np.array(v, order="C") for k, v in sorted(arrays.items()) if _file_for(k) == name}  # 0-d stays 0-d
        paths.append(os.path.join(directory, name))
        save_file(part, paths[-1], metadata=metadata)
    return paths

"""Make and save checkpoints with timm's keys: random weights of realistic scale, for tests and demos.

timm zero-initialises the Mixer head, so a fresh timm model gives all-zero logits that "match"
anything. These weights fill every tensor, at the scale trained weights have, so logits spread.
"""
import dataclasses

import numpy as np
from safetensors.numpy import save_file

from .weights import ARCHITECTURES, MixerConfig, expected_shapes


def config_for(arch="mixer_b16_224", **changes):
    """A MixerConfig for a timm architecture name, with any field changed (num_classes=21843, depth=2 ...)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return dataclasses.replace(ARCHITECTURES[arch], **changes)


def random_tensor(key, shape, rng):
    """A float64 array for the tensor named key (a timm key), random at trained-weight scale."""
    shape = tuple(shape)
    if key.endswith("weight") and len(shape) > 1:  # linear / conv: uniform, variance 1/fan_in
        fan_in = int(np.prod(shape[1:]))
        bound = np.sqrt(3.0 / fan_in)
        return rng.uniform(-bound, bound, shape)
    if "norm" in key and key.endswith("weight"):  # LayerNorm gain: around 1
        return 1.0 + 0.2 * rng.standard_normal(shape)
    return 0.1 * rng.standard_normal(shape)  # biases (and LayerNorm shift): small


def random_state_dict(config, seed=0, dtype=np.float32):
    """{timm key: array} filled with seeded random values of trained-weight scale."""
    if not isinstance(config, MixerConfig):
        config = config_for(config)
    rng = np.random.default_rng(seed)
    return {key: random_tensor(key, shape, rng).astype(dtype) for key, shape in expected_shapes(config).items()}


def save_checkpoint(state_dict, path, metadata=None):
    """Write {key: array} as safetensors (contiguous copies; no pickle)."""
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(path), metadata=metadata)
    return path

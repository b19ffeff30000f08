"""Shared fixtures: seeded random checkpoints with timm's keys, and the timm model that loads them.

timm and torch are imported at the top on purpose: the tests verify against live timm, and a
missing timm must fail the run, not skip it.
"""
import numpy as np
import pytest
import timm
import torch

from numpy_mixer.checkpoint import config_for, random_state_dict, save_checkpoint

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """make_checkpoint(arch, seed=0, **config_changes) -> (path, state_dict), written once per session."""
    cache = {}

    def make(arch="mixer_b16_224", seed=0, **changes):
        key = (arch, seed, tuple(sorted(changes.items())))
        if key not in cache:
            state = random_state_dict(config_for(arch, **changes), seed=seed)
            path = tmp_path_factory.mktemp("ckpt") / f"{arch}-{seed}.safetensors"
            save_checkpoint(state, path)
            cache[key] = (path, state)
        return cache[key]

    return make


def timm_model(arch, state_dict, dtype=torch.float32):
    """timm's own model for arch, with every tensor taken from state_dict (strict), in eval mode."""
    num_classes = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=True)
    return model.to(dtype).eval()


@pytest.fixture
def rng():
    return np.random.default_rng(0)

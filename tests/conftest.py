"""Shared fixtures: seeded random checkpoints with timm's keys, and the timm model that loads them.

timm and torch are imported at the top on purpose: the tests verify against live timm, and a
missing timm must fail the run, not skip it.
"""
import os

import numpy as np
import pytest
import timm
import torch
from hypothesis import HealthCheck, settings

from numpy_mixer.checkpoint import config_for, random_state_dict, save_checkpoint

torch.set_num_threads(2)


def write_checkpoint(folder, arch="mixer_b16_224", seed=0, **changes):
    """A seeded random checkpoint of arch (config_for's changes applied) in folder: (path, state_dict)."""
    state = random_state_dict(config_for(arch, **changes), seed=seed)
    path = folder / f"{arch}-{seed}.safetensors"
    save_checkpoint(state, path)
    return path, state


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """make_checkpoint(arch, seed=0, **config_changes) -> (path, state_dict), written once per session."""
    cache = {}

    def make(arch="mixer_b16_224", seed=0, **changes):
        key = (arch, seed, tuple(sorted(changes.items())))
        if key not in cache:
            cache[key] = write_checkpoint(tmp_path_factory.mktemp("ckpt"), arch, seed, **changes)
        return cache[key]

    return make


@pytest.fixture
def fresh_checkpoint(tmp_path):
    """fresh_checkpoint(arch, seed=0, **config_changes) -> (path, state_dict), written to this test's tmp_path.

    For the big checkpoints only one test needs (L/16 is 813 MB): pytest deletes the folder when the test
    passes (tmp_path_retention_policy in pyproject.toml), where make_checkpoint's files last the session.
    """
    return lambda arch="mixer_b16_224", seed=0, **changes: write_checkpoint(tmp_path, arch, seed, **changes)


def timm_model(arch, state_dict, dtype=torch.float32):
    """timm's own model for arch, with every tensor taken from state_dict (strict), in eval mode."""
    num_classes = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=True)
    return model.to(dtype).eval()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# Hypothesis profiles for the fuzzing suites (tests/test_fuzz_*.py). Each fuzz test sizes its case count
# as a multiple of settings().max_examples, so one number scales them all:
#   ci (default)  ~2-3 minutes for the fuzz files on 2 cores, derandomized (the same cases every run)
#   thorough      HYPOTHESIS_PROFILE=thorough pytest tests/test_fuzz_weights.py ...: 20x the cases, random
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

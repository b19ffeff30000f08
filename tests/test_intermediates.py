"""MlpMixer.forward_intermediates against timm's, on random weights of trained scale.

Every argument timm has (indices, norm, stop_early, output_fmt, intermediates_only) is compared with
timm's own method on the same weights and inputs.
"""
import numpy as np
import pytest
import torch

from numpy_mixer import MixerError, MlpMixer
from numpy_mixer.checkpoint import config_for, random_state_dict
from numpy_mixer.model import take_indices

from .conftest import timm_model

ARCH = "mixer_s32_224"


@pytest.fixture(scope="module")
def pair():
    state = random_state_dict(config_for(ARCH, num_classes=10), seed=5)
    return MlpMixer(state), timm_model(ARCH, state)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(2).standard_normal((2, 3, 224, 224)).astype(np.float32)


@pytest.mark.parametrize("kwargs", [
    {},
    {"indices": 3},
    {"indices": [0, 2, -1]},
    {"indices": [1, 4], "norm": True},
    {"indices": [1, 4], "stop_early": True},
    {"indices": 2, "output_fmt": "NLC"},
    {"indices": [0, 5], "norm": True, "stop_early": True, "output_fmt": "NLC"},
])
def test_matches_timm(pair, x, kwargs):
    ours_model, theirs_model = pair
    features, intermediates = ours_model.forward_intermediates(x, **kwargs)
    with torch.no_grad():
        t_features, t_intermediates = theirs_model.forward_intermediates(torch.from_numpy(x), **kwargs)
    assert len(intermediates) == len(t_intermediates) > 0
    for i, (ours, theirs) in enumerate(zip(intermediates, t_intermediates)):
        theirs = theirs.numpy()
        assert ours.shape == theirs.shape and ours.dtype == np.float32, f"intermediate {i}: {ours.shape}"
        assert np.abs(ours - theirs).max() < 1e-4 * np.abs(theirs).max(), f"intermediate {i}"
    assert features.shape == tuple(t_features.shape)
    assert np.abs(features - t_features.numpy()).max() < 1e-4 * np.abs(t_features.numpy()).max()
    assert np.abs(intermediates[0]).std() > 0.1  # non-degenerate


def test_every_block_and_the_last_equals_forward_features(pair, x):
    model, _ = pair
    features, intermediates = model.forward_intermediates(x, output_fmt="NLC")
    assert len(intermediates) == model.config.depth
    assert np.array_equal(features, model.forward_features(x, fast=False))
    G = model.config.img_size // model.config.patch_size
    grid = model.forward_intermediates(x, indices=[-1], intermediates_only=True)
    assert isinstance(grid, list) and grid[0].shape == (2, model.config.embed_dim, G, G)
    # NCHW is the NLC tokens laid back on the grid, row by row
    assert np.array_equal(grid[0][:, :, 1, 2], intermediates[-1][:, G + 2, :])


def test_take_indices_as_timm():
    from timm.models._features import feature_take_indices

    for indices in [None, 1, 8, [0], [-1, 0, 3], (2, 2)]:
        assert take_indices(8, indices) == feature_take_indices(8, indices)[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"indices": 0}, "1 <= n <= 8"),
    ({"indices": 9}, "1 <= n <= 8"),
    ({"indices": [8]}, "blocks 0 to 7"),
    ({"indices": [-9]}, "blocks 0 to 7"),
    ({"indices": []}, "empty"),
    ({"output_fmt": "NHWC"}, "output_fmt"),
])
def test_bad_arguments(pair, x, kwargs, message):
    with pytest.raises(MixerError, match=message):
        pair[0].forward_intermediates(x, **kwargs)

"""numpy_mixer.explain against torch autograd on timm's own model, random weights of trained scale.

The input gradient of the whole model (stem, every block, norm, pool, head) is the part that can go
wrong: it is compared in float64 (tight) and float32 (the dtype a user runs). Occlusion is compared
with timm's logits on the same occluded images, built by hand.
"""
import numpy as np
import pytest
import torch

from numpy_mixer import MixerError, MlpMixer
from numpy_mixer.checkpoint import config_for, random_state_dict
from numpy_mixer.explain import gradient_x_input, occlusion, saliency

from .conftest import timm_model

ARCH = "mixer_s32_224"  # 49 tokens, 8 blocks of width 512: the full depth, quick on 2 cores


@pytest.fixture(scope="module")
def state():
    return random_state_dict(config_for(ARCH, num_classes=10), seed=3)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)


def torch_input_grad(state, x, targets, dtype):
    reference = timm_model(ARCH, state, dtype)
    xt = torch.from_numpy(x).to(dtype).requires_grad_(True)
    logits = reference(xt)
    logits[torch.arange(len(x)), torch.as_tensor(targets)].sum().backward()
    return xt.grad.numpy(), logits.detach().numpy()


def test_saliency_matches_autograd_float64(state, images):
    model = MlpMixer(state).astype(np.float64)
    targets = np.array([2, 7])
    ours = saliency(model, images, targets)
    theirs, logits = torch_input_grad(state, images, targets, torch.float64)
    assert ours.shape == images.shape and ours.dtype == np.float64
    assert logits.std() > 0.1 and np.abs(theirs).max() > 0  # non-degenerate: a real gradient to match
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10 * np.abs(theirs).max())


def test_saliency_matches_autograd_float32_and_single_image(state, images):
    model = MlpMixer(state)
    theirs, _ = torch_input_grad(state, images[:1], [4], torch.float64)
    ours = saliency(model, images[0], 4)  # one image [3, H, W], one int target
    assert ours.shape == images.shape[1:] and ours.dtype == np.float32
    assert np.abs(ours - theirs[0]).max() < 1e-3 * np.abs(theirs).max()
    # and the batched call gives each image its own gradient
    assert np.allclose(saliency(model, images, [4, 4])[0], ours, atol=1e-6 * np.abs(ours).max())


def test_gradient_x_input(state, images):
    model = MlpMixer(state).astype(np.float64)
    theirs, _ = torch_input_grad(state, images, [1, 1], torch.float64)
    np.testing.assert_allclose(gradient_x_input(model, images, 1), theirs * images,
                               atol=1e-10 * np.abs(theirs * images).max())


def test_occlusion_matches_timm_on_occluded_images(state, images):
    model = MlpMixer(state)
    x, target, patch, stride = images[0], 5, 112, 56  # 3 x 3 squares of 112 px
    got = occlusion(model, x, target, patch=patch, stride=stride, baseline=0.0)
    assert got.shape == (224, 224) and got.dtype == np.float32
    reference = timm_model(ARCH, state)
    with torch.no_grad():
        base = reference(torch.from_numpy(x[None]))[0, target].item()
        drop, count = np.zeros((224, 224)), np.zeros((224, 224))
        for r in (0, 56, 112):
            for c in (0, 56, 112):
                hidden = x.copy()
                hidden[:, r:r + patch, c:c + patch] = 0
                drop[r:r + patch, c:c + patch] += base - reference(torch.from_numpy(hidden[None]))[0, target].item()
                count[r:r + patch, c:c + patch] += 1
    expected = drop / count
    assert np.abs(expected).max() > 0.01  # hiding a ninth of the image moves the score
    np.testing.assert_allclose(got, expected, atol=1e-3 * np.abs(expected).max())


def test_occlusion_covers_edges_when_the_stride_does_not_divide():
    state = random_state_dict(config_for(ARCH, num_classes=10, depth=1), seed=0)
    x = np.random.default_rng(0).standard_normal((3, 224, 224)).astype(np.float32)
    got = occlusion(MlpMixer(state), x, 0, patch=100, stride=100)  # corners 0, 100 and a last one at 124
    assert np.count_nonzero(got[-1]) > 0 and np.count_nonzero(got[:, -1]) > 0


@pytest.mark.parametrize("call, message", [
    (lambda m, x: saliency(m, x, 10), "0 to 9"),
    (lambda m, x: saliency(m, x, 1.5), "class indices"),
    (lambda m, x: saliency(m, x[None].repeat(2, 0), [1, 2, 3]), "3 targets for 2 images"),
    (lambda m, x: occlusion(m, x[None], 1), "one image"),
    (lambda m, x: occlusion(m, x, 1, patch=0), "patch=0"),
    (lambda m, x: saliency(m, x[:, :100], 1), "expected (B, 3, 224, 224)"),
])
def test_bad_arguments_are_one_line_errors(call, message):
    model = MlpMixer(random_state_dict(config_for(ARCH, num_classes=10, depth=1), seed=0))
    x = np.zeros((3, 224, 224), np.float32)
    with pytest.raises(MixerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(model, x)


def test_headless_model_is_refused():
    model = MlpMixer(random_state_dict(config_for(ARCH, num_classes=0, depth=1), seed=0))
    with pytest.raises(MixerError, match="no head"):
        saliency(model, np.zeros((3, 224, 224), np.float32), 0)


def test_empty_batch_gives_empty_maps():
    model = MlpMixer(random_state_dict(config_for(ARCH, num_classes=10, depth=1), seed=0))
    x = np.zeros((0, 3, 224, 224), np.float32)
    for explain in (saliency, gradient_x_input):
        for target in (1, np.zeros(0, np.int64)):
            maps = explain(model, x, target)
            assert maps.shape == (0, 3, 224, 224) and maps.dtype == np.float32

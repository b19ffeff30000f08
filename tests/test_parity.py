"""Whole-model parity with live timm, for every Mixer architecture, on non-degenerate random weights.

Compared at timm's three points: forward_features (after the final norm), pre-logits, logits,
for the fast path and the readable layers alike. float32: max abs diff <= 1e-5 x the largest value
of each (the issue asks 1e-4 x max|logit|; observed ~1e-6); float64: <= 1e-12 (asked 1e-9; observed ~1e-14).
"""
import numpy as np
import pytest
import torch

from numpy_mixer import load_model

from .conftest import timm_model

CASES = [  # (architecture, classes): all six of timm's Mixers, and each head size it ships
    ("mixer_s32_224", 1000),
    ("mixer_s16_224", 1000),
    ("mixer_b32_224", 1000),
    ("mixer_b16_224", 1000),
    ("mixer_b16_224", 21843),
    ("mixer_b16_224", 11221),
    ("mixer_l32_224", 1000),
    ("mixer_l16_224", 1000),
]


def compare(model, reference, x, rtol, fast=True):
    """Max abs diffs (features, pre-logits, logits), each asserted within rtol x its largest value."""
    with torch.no_grad():
        tx = torch.from_numpy(x)
        feats_t = reference.forward_features(tx)
        pre_t = reference.forward_head(feats_t, pre_logits=True)
        logits_t = reference.forward_head(feats_t)
    feats = model.forward_features(x, fast=fast)
    pre = model.forward_head(feats, pre_logits=True)
    logits = model.forward_head(feats)
    reference_logits = logits_t.numpy()
    scale = np.abs(reference_logits).max()
    # the weights are random but not degenerate: logits spread, and differ between images
    assert scale > 0.5 and reference_logits.std() > 0.1
    assert np.abs(reference_logits[0] - reference_logits[1]).max() > 0.1 * scale
    diffs = {}
    for name, ours, theirs in [("features", feats, feats_t), ("pre_logits", pre, pre_t), ("logits", logits, logits_t)]:
        theirs = theirs.numpy()
        assert ours.dtype == x.dtype, f"{name}: {ours.dtype}, expected {x.dtype}"
        assert ours.shape == theirs.shape
        diffs[name] = float(np.abs(ours - theirs).max())
        size = np.abs(theirs).max()
        assert diffs[name] <= rtol * size, f"{name}: max diff {diffs[name]:.3g} > {rtol} x {size:.3g}"
    return diffs, scale


@pytest.mark.parametrize("arch, num_classes", CASES)
def test_float32_logits_features_pre_logits_match_timm(make_checkpoint, fresh_checkpoint, arch, num_classes, rng):
    # the checkpoints other tests share come from the session's cache; the rest are deleted after the test
    shared = arch in ("mixer_s32_224", "mixer_s16_224", "mixer_b16_224") and num_classes == 1000
    path, state = (make_checkpoint if shared else fresh_checkpoint)(arch, num_classes=num_classes)
    model = load_model(path)
    reference = timm_model(arch, state)
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    for fast in (True, False):
        diffs, scale = compare(model, reference, x, 1e-5, fast)
        print(f"\n{arch} ({num_classes} classes) float32 {'fast' if fast else 'readable'} max|logit| {scale:.3f} "
              "max diffs " + " ".join(f"{k} {v:.2e}" for k, v in diffs.items()))


@pytest.mark.parametrize("arch", ["mixer_s16_224", "mixer_b16_224"])
def test_float64_matches_timm_to_1e9(make_checkpoint, arch, rng):
    path, state = make_checkpoint(arch)
    model = load_model(path).astype(np.float64)
    reference = timm_model(arch, state, dtype=torch.float64)
    x = rng.standard_normal((2, 3, 224, 224))
    diffs, scale = compare(model, reference, x, 1e-12)
    print(f"\n{arch} float64 max|logit| {scale:.3f} max diffs " + " ".join(f"{k} {v:.2e}" for k, v in diffs.items()))


def test_num_classes_0_drops_the_head_as_timm(make_checkpoint, rng):
    path, state = make_checkpoint("mixer_s32_224")
    model = load_model(path, num_classes=0)
    assert model.num_classes == 0 and "head" not in model.params
    reference = timm_model("mixer_s32_224", {k: v for k, v in state.items() if not k.startswith("head.")})
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(x)).numpy()
    ours = model(x)
    assert ours.shape == theirs.shape == (2, 512)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * np.abs(theirs).max())


def test_new_head_size_is_zero_initialised_as_timm(make_checkpoint, rng):
    path, _ = make_checkpoint("mixer_s32_224")
    model = load_model(path, num_classes=10)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert model(x).shape == (1, 10) and model.num_classes == 10
    assert not model(x).any()


def test_parameter_count_matches_timm(make_checkpoint):
    path, state = make_checkpoint("mixer_b16_224")
    model = load_model(path)
    reference = timm_model("mixer_b16_224", state)
    assert model.num_params() == sum(p.numel() for p in reference.parameters()) == 59_880_472

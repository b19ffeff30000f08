"""Why did the model say that? Three standard explanations of one prediction, in NumPy.

    s = saliency(model, x, target)               # d score / d input          [3, H, W] (or [B, 3, H, W])
    g = gradient_x_input(model, x, target)       # saliency * input           same shape
    m = occlusion(model, x, target, patch=4)     # score drop when a square is hidden   [H, W]

The score is the target class's logit (before the softmax), as in Simonyan et al. 2014 (arXiv 1312.6034):
the softmax would mix in every other class. The gradients come from numpy_mixer.backward (the same
pairs that train the digits model), run on the readable layer functions in the model's dtype; the
input gradient is tested against torch autograd on timm's model (tests/test_explain.py).

x is the model's input, already preprocessed (model.preprocess): normalised, so 0 is the dataset's
mean colour. Gradient x input and occlusion's default baseline both measure against that 0.
"""
import numpy as np

from . import backward
from .errors import MixerError


def _batch(model, x, target):
    """x [3, H, W] or [B, 3, H, W], target an int or B ints -> (x [B, 3, H, W], targets [B], was_single)."""
    x = np.asarray(x)
    single = x.ndim == 3
    x = model._cast(model._check_input(x[None] if single else x))
    if model.num_classes == 0:
        raise MixerError("the model has no head (num_classes=0): explanations need a class score; load it with one")
    try:
        targets = np.broadcast_to(np.asarray(target), (len(x),))
    except ValueError:
        raise MixerError(f"{np.size(target)} targets for {len(x)} images: give one int, or one per image") from None
    if targets.dtype.kind not in "iu" or targets.size and (targets.min() < 0 or targets.max() >= model.num_classes):
        raise MixerError(f"target {target!r}: expected class indices from 0 to {model.num_classes - 1}, "
                         f"one int or one per image")
    return x, targets, single


def saliency(model, x, target):
    """The gradient of the target class's logit with respect to the input image.

    [3, H, W] -> [3, H, W], or [B, 3, H, W] with B targets -> [B, 3, H, W]
    """
    x, targets, single = _batch(model, x, target)
    if len(x) == 0:  # an empty batch: empty maps, as the model gives empty logits
        return np.zeros_like(x)
    logits, cache = backward.forward_with_cache(x, model.params, model.config.patch_size)  # [B, K]
    dlogits = np.zeros_like(logits)
    dlogits[np.arange(len(x)), targets] = 1  # d(sum of each image's target logit) / d logits
    dx, _ = backward.backward(dlogits, cache)  # [B, K] -> [B, 3, H, W]; images do not interact, so each
    return dx[0] if single else dx  # row of dx is that image's own gradient


def gradient_x_input(model, x, target):
    """Saliency times the (normalised) input: a first-order estimate of each pixel's contribution
    relative to the all-zero (mean-colour) image. Same shapes as saliency."""
    x = np.asarray(x)
    return saliency(model, x, target) * model._cast(x)


def occlusion(model, x, target, patch=4, stride=None, baseline=0.0, batch_size=32):
    """How much the target logit drops when a patch x patch square is set to baseline, per pixel.

    Slides the square over the image with the given stride (default: patch // 2); each pixel gets the
    mean drop over the squares that cover it (0 where none does). Positive: hiding it lowers the score.
    baseline: a number (0 = the mean colour after normalisation) or a [3, H, W] image.
    x [3, H, W] -> [H, W]
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise MixerError(f"occlusion explains one image: x has shape {x.shape}, expected (3, H, W)")
    x, targets, _ = _batch(model, x, target)
    x, target = x[0], int(targets[0])
    _, H, W = x.shape
    stride = stride or max(1, patch // 2)
    if not (0 < patch <= min(H, W)) or stride <= 0:
        raise MixerError(f"occlusion patch={patch}, stride={stride}: expected 0 < patch <= {min(H, W)} and stride > 0")
    fill = np.broadcast_to(np.asarray(baseline, x.dtype), x.shape)  # [3, H, W]
    corners = [(r, c) for r in _starts(H, patch, stride) for c in _starts(W, patch, stride)]
    base_score = model(x[None])[0, target]
    drop_sum = np.zeros((H, W), np.float64)
    count = np.zeros((H, W), np.int64)
    for first in range(0, len(corners), batch_size):
        chunk = corners[first:first + batch_size]
        occluded = np.repeat(x[None], len(chunk), axis=0)  # [b, 3, H, W]
        for image, (r, c) in zip(occluded, chunk):
            image[:, r:r + patch, c:c + patch] = fill[:, r:r + patch, c:c + patch]
        scores = model(occluded)[:, target]  # [b]
        for score, (r, c) in zip(scores, chunk):
            drop_sum[r:r + patch, c:c + patch] += base_score - score
            count[r:r + patch, c:c + patch] += 1
    return (drop_sum / np.maximum(count, 1)).astype(x.dtype)


def _starts(size, patch, stride):
    """Top-left corners along one axis, the last one flush with the edge so every pixel is covered."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts

"""Images in, top-k (label, probability) out."""

import sys

import numpy as np

from .errors import MixerError
from .labels import load_labels
from .model import load_model
from .weights import DEFAULT_MODEL

_DEFAULT = {}


def softmax(logits):
    """Probabilities along the last axis, computed stably. [..., K] -> [..., K]"""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def default_model():
    """mixer_b16_224.goog_in21k_ft_in1k, loaded once per process."""
    if DEFAULT_MODEL not in _DEFAULT:
        _DEFAULT[DEFAULT_MODEL] = load_model(DEFAULT_MODEL)
    return _DEFAULT[DEFAULT_MODEL]


def class_names(model):
    """The model's class names, or "class N" when its head has no known label set."""
    label_set = model.pretrained_cfg.get("labels")
    if label_set is None:
        return [f"class {i}" for i in range(model.num_classes)]
    if isinstance(label_set, (list, tuple)):
        return list(label_set)
    return load_labels(label_set)


DEFAULT_BATCH_SIZE = 16


def predict(img, top_k=5, model=None, batch_size=DEFAULT_BATCH_SIZE, progress=False):
    """Top-k [(label, probability), ...] for one image; a list of such lists for a list of images.

    img: a path, a PIL image or an HWC uint8 array (or a list of these);
    model: an MlpMixer from load_model (default: mixer_b16_224.goog_in21k_ft_in1k);
    batch_size: images per forward pass (memory grows with it; 8-32 is fastest on a CPU);
    progress: show a tqdm progress bar on stderr.
    """
    single = not isinstance(img, (list, tuple))
    images = [img] if single else list(img)
    results = list(iter_predict(images, top_k, model, batch_size, progress))
    return results[0] if single else results


def iter_predict(images, top_k=5, model=None, batch_size=DEFAULT_BATCH_SIZE, progress=False):
    """Top-k lists for a list of images, one at a time, computed batch_size images per forward pass."""
    if not isinstance(top_k, int) or top_k < 1:
        raise MixerError(f"top_k must be a positive integer, got {top_k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MixerError(f"batch_size must be a positive integer, got {batch_size!r}")
    model = model or default_model()
    if model.num_classes == 0:
        raise MixerError(f"{model.pretrained_cfg['name']}: this model has no classifier head (num_classes=0); "
                         "use model.forward_features or model(x) for embeddings")
    names = class_names(model)
    k = min(top_k, model.num_classes)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(images), unit="img", file=sys.stderr)
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            x = np.stack([model.preprocess(i) for i in batch])  # [b, 3, H, W]
            probs = softmax(model(x))  # [b, K]
            for p in probs:
                top = np.argsort(-p, kind="stable")[:k]
                yield [(names[i], float(p[i])) for i in top]
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()

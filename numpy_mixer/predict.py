"""Images in, top-k (label, probability) out."""

import numpy as np

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


def predict(img, top_k=5, model=None):
    """Top-k [(label, probability), ...] for one image; a list of such lists for a list of images.

    img: a path, a PIL image or an HWC uint8 array (or a list of these);
    model: an MlpMixer from load_model (default: mixer_b16_224.goog_in21k_ft_in1k).
    """
    model = model or default_model()
    single = not isinstance(img, (list, tuple))
    images = [img] if single else list(img)
    if model.num_classes == 0:
        raise ValueError("this model has no classifier head (num_classes=0); use model.forward_features")
    x = np.stack([model.preprocess(i) for i in images])  # [B, 3, H, W]
    probs = softmax(model(x))  # [B, K]
    names = class_names(model)
    k = min(top_k, model.num_classes)
    results = []
    for p in probs:
        top = np.argsort(-p, kind="stable")[:k]
        results.append([(names[i], float(p[i])) for i in top])
    return results[0] if single else results

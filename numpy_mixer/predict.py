"""Images in, top-k (label, probability) out."""

import os
import sys

import numpy as np

from .errors import MixerError, positive_int
from .labels import load_labels
from .model import MlpMixer, load_model
from .preprocess import image_name, read_all, read_or_error
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

    img: a path, an http(s) URL, a PIL image or an HWC uint8 array (or a list of these);
    model: an MlpMixer from load_model, a timm name, "digits" or a .safetensors path
           (default: mixer_b16_224.goog_in21k_ft_in1k);
    batch_size: images per forward pass (memory grows with it; 8-32 is fastest on a CPU);
    progress: show a tqdm progress bar on stderr.
    """
    single = not isinstance(img, (list, tuple))
    images = [img] if single else list(img)
    results = list(iter_predict(images, top_k, model, batch_size, progress))
    return results[0] if single else results


def iter_predict(images, top_k=5, model=None, batch_size=DEFAULT_BATCH_SIZE, progress=False):
    """Top-k lists for a list of images, one at a time, computed batch_size images per forward pass."""
    for _, result in classify_each(images, top_k, model, batch_size, progress):
        if isinstance(result, MixerError):
            raise result
        yield [(label, prob) for _, label, prob in result]


def classify_each(images, top_k=5, model=None, batch_size=DEFAULT_BATCH_SIZE, progress=False):
    """(image, result) for each image, in order, as soon as its batch is done.

    result: [(class index, label, probability), ...] sorted by probability, or the MixerError that
    says why this image could not be classified (unreadable, or non-finite logits): one bad image
    does not stop the others. The progress bar counts an image when its result is ready, so it
    reaches N/N before the last result is handed out.
    """
    images = list(images)
    top_k, batch_size = _check_numbers(top_k, batch_size)
    if not images:  # nothing to do: no model to load (the default one is a download)
        return
    model = _check_model(model)
    from .fast import num_workers  # images are read on as many threads as the model runs on

    names = class_names(model)
    k = min(top_k, model.num_classes)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(images), unit="img", file=sys.stderr)
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            results = read_all(batch, lambda img: read_or_error(model, img), num_workers())  # [3, H, W] or MixerErrors
            good = [i for i, r in enumerate(results) if not isinstance(r, MixerError)]
            if good:
                with np.errstate(over="ignore", invalid="ignore"):  # non-finite logits: checked below
                    logits = model.outputs_by_row(np.stack([results[i] for i in good]))  # [b, K]
                    probs = softmax(logits)
                for i, z, p in zip(good, logits, probs):
                    if not np.all(np.isfinite(z)):
                        results[i] = MixerError(f"{image_name(batch[i])}: the model gave non-finite logits "
                                                f"(NaN or Inf) - check the checkpoint's weights and the image")
                        continue
                    top = np.argsort(-p, kind="stable")[:k]
                    results[i] = [(int(c), names[c], float(p[c])) for c in top]
            if bar is not None:
                bar.update(len(batch))
                if start + batch_size >= len(images):
                    bar.close()  # before the last results go out: the caller may stop there
            yield from zip(batch, results)
    finally:
        if bar is not None:
            bar.close()


def _check_numbers(top_k, batch_size):
    return positive_int(top_k, "top_k"), positive_int(batch_size, "batch_size")


def _check_model(model):
    """An MlpMixer with a head: one given by name or path is loaded here."""
    if model is None:
        model = default_model()
    elif isinstance(model, (str, os.PathLike)):
        model = _load_by_name(model)
    elif not isinstance(model, MlpMixer):
        raise MixerError(f"model must be an MlpMixer (from load_model), a timm name, 'digits' or a path to a "
                         f".safetensors file, got {type(model).__name__}")
    if model.num_classes == 0:
        raise MixerError(f"{model.pretrained_cfg['name']}: this model has no classifier head (num_classes=0); "
                         "use model.forward_features or model(x) for embeddings")
    return model


def _load_by_name(name_or_path):
    """load_model(name_or_path); names (not files) are loaded once per process, as the default model."""
    text = os.fspath(name_or_path)
    if os.path.exists(text):  # a file may change between calls: read it again
        return load_model(text)
    if text not in _DEFAULT:
        _DEFAULT[text] = load_model(text)
    return _DEFAULT[text]

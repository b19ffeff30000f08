"""Human-readable class names, shipped with the package (no network): see tools/make_labels.py."""
from functools import lru_cache
from importlib import resources

from .errors import MixerError

LABEL_SETS = ("imagenet-1k", "imagenet-21k-goog", "imagenet-21k-miil")


def load_labels(name="imagenet-1k"):
    """The class names of a label set, by class index: load_labels()[281] == 'tabby, tabby cat'."""
    if not isinstance(name, str) or name not in LABEL_SETS:
        raise MixerError(f"unknown label set {name!r}; known: {', '.join(LABEL_SETS)}")
    return _read(name)


@lru_cache(maxsize=None)
def _read(name):
    text = resources.files("numpy_mixer").joinpath("data", f"{name}.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())

"""Weights and photos for the notebooks: real pretrained weights when we have them, else random ones.

    model, real = demo_model()        # real is False when the weights are random
    photos = demo_photos()            # {"chelsea": HxWx3 uint8, ...} from scikit-image

One environment variable chooses the weights (NUMPY_MIXER_WEIGHTS):
    unset / "auto"   pretrained if in the Hugging Face cache or downloadable, else random (offline, no wait)
    "random"         a seeded random checkpoint of trained-weight scale, generated once and cached on disk
    "pretrained"     the pretrained weights, or a MixerError saying how to get them
    a timm tag       those pretrained weights, e.g. mixer_b16_224.goog_in21k
    a file path      a local .safetensors checkpoint with timm's keys
Random weights run every line of code with real numbers, but what they *predict* means nothing:
the notebooks say so whenever `real` is False.
"""
import os
import tempfile
from pathlib import Path

from .checkpoint import config_for, random_state_dict, save_checkpoint
from .errors import MixerError
from .files import written_whole
from .hub import WEIGHTS_NAME, cached_hub_file
from .hub import hub_reachable as _hub_reachable  # the 3-s probe, shared with the loader
from .model import MlpMixer, load_model
from .weights import ARCHITECTURES, DEFAULT_MODEL, PRETRAINED, read_safetensors

ENV_VAR = "NUMPY_MIXER_WEIGHTS"

# scikit-image's bundled colour photos (no download needed), with what is in them
PHOTOS = {
    "chelsea": "Chelsea the tabby cat",
    "coffee": "a cup of coffee on a saucer",
    "astronaut": "astronaut Eileen Collins in front of a flag",
    "rocket": "a rocket on the launch pad",
    "immunohistochemistry": "stained tissue under a microscope",
    "hubble_deep_field": "galaxies in the Hubble deep field",
}
_RANDOM_MARK = "numpy_mixer random weights"


def demo_model(name=DEFAULT_MODEL, num_classes=None, seed=0):
    """(model, real): the weights NUMPY_MIXER_WEIGHTS asks for; real is False for random weights.

    name: a timm tag (mixer_b16_224.goog_in21k_ft_in1k) or an architecture (mixer_s16_224, which has
    no pretrained weights, so it is always random); num_classes: as in load_model (0 drops the head).
    """
    choice = os.environ.get(ENV_VAR, "").strip() or "auto"
    arch = name.split(".")[0]
    tag = name if name in PRETRAINED else next((t for t in PRETRAINED if t.split(".")[0] == name), None)
    model = real = None
    if choice == "auto" and tag is not None:
        cached = cached_hub_file(f"timm/{tag}", WEIGHTS_NAME)
        if cached:  # straight from the cache: no request to the hub, no wait when offline
            model, real = MlpMixer(read_safetensors(cached), dict(PRETRAINED[tag], name=tag), tag), True
        elif _hub_reachable():
            try:
                model, real = load_model(tag), True
            except MixerError:  # e.g. the download failed half-way: fall back to random weights
                pass
    if choice == "pretrained":
        if tag is None:
            raise MixerError(f"{name} has no pretrained weights in timm; set {ENV_VAR}=random or to a local file")
        model, real = load_model(tag), True
    elif choice in PRETRAINED:
        model, real = load_model(choice), True
    elif choice not in ("auto", "random"):  # a local file
        if not os.path.isfile(choice):
            raise MixerError(f"{ENV_VAR}={choice!r} is neither auto, random, pretrained, a timm tag "
                             f"({', '.join(PRETRAINED)}) nor an existing .safetensors file")
        model = load_model(choice)
        real = not has_random_weights(model)
    if model is None:
        if arch not in ARCHITECTURES:
            raise MixerError(f"unknown model {name!r}; known architectures: {', '.join(ARCHITECTURES)}")
        model, real = _random_model(arch, tag, seed), False
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model, real


def weights_note(model, real):
    """One plain sentence on what the weights are, for the top of a notebook."""
    if real:
        return f"Pretrained weights: {model.pretrained_cfg['name']}. Predictions and learned filters are real."
    return (f"RANDOM weights ({model.pretrained_cfg['name']}): {ENV_VAR}=random, or no pretrained checkpoint in "
            "the Hugging Face cache and no network. Every shape and every comparison with timm below is real, "
            "but the predictions and the 'learned' filters are meaningless. Put the pretrained weights in the "
            f"Hugging Face cache (or set {ENV_VAR}=path/to/model.safetensors) and run again to see real ones.")


def demo_photos(names=None):
    """{name: HxWx3 uint8 photo} from scikit-image's bundled data (no network). names: keys of PHOTOS."""
    try:
        import skimage.data
    except ImportError:
        raise MixerError("the demo photos come from scikit-image: pip install scikit-image") from None
    names = list(PHOTOS) if names is None else list(names)
    unknown = [n for n in names if n not in PHOTOS]
    if unknown:
        raise MixerError(f"unknown demo photo {unknown[0]!r}; known: {', '.join(PHOTOS)}")
    return {n: getattr(skimage.data, n)() for n in names}


def random_checkpoint(arch="mixer_b16_224", num_classes=1000, seed=0):
    """Path of a seeded random checkpoint for arch, written once to a cache directory and reused."""
    path = _cache_dir() / f"{arch}-{num_classes}-seed{seed}.safetensors"
    if not path.is_file():
        state = random_state_dict(config_for(arch, num_classes=num_classes), seed=seed)
        with written_whole(path) as tmp:  # two notebooks starting at once never read half a file
            save_checkpoint(state, tmp, metadata={"format": "pt", "source": _RANDOM_MARK, "seed": str(seed)})
    return path


def _random_model(arch, tag, seed):
    cfg = dict(PRETRAINED[tag]) if tag else {}  # the tag's preprocessing and label set, if it has one
    num_classes = cfg.pop("num_classes", 1000)
    name = f"{tag or arch}, random seed {seed}"
    return MlpMixer(read_safetensors(random_checkpoint(arch, num_classes, seed)), dict(cfg, name=name), name)


def has_random_weights(model):
    """Whether model's weights come from a checkpoint marked as random (numpy-mixer random-checkpoint, or the
    notebooks' random stand-ins), by its file's metadata: their predictions mean nothing."""
    return model.metadata.get("source") == _RANDOM_MARK


def _cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for directory in (Path(base) / "numpy_mixer", Path(tempfile.gettempdir()) / f"numpy_mixer-{getattr(os, 'getuid', lambda: 'user')()}"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if os.access(directory, os.W_OK):
                return directory
        except OSError:
            pass
    raise MixerError(f"no writable cache directory for random weights (tried {base}/numpy_mixer and the temp "
                     f"directory); set {ENV_VAR} to a .safetensors file")

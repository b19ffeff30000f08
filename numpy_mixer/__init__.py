"""numpy_mixer: MLP-Mixer (arXiv 2105.01601) in pure NumPy, on timm's safetensors weights."""
from . import layers
from .embed import embed
from .errors import MixerError
from .labels import load_labels
from .model import MlpMixer, load_model
from .predict import predict, softmax
from .preprocess import preprocess
from .weights import DEFAULT_MODEL, PRETRAINED

__version__ = "0.1.0"
__all__ = ["layers", "embed", "MixerError", "load_labels", "MlpMixer", "load_model", "predict", "softmax", "preprocess",
           "DEFAULT_MODEL", "PRETRAINED"]

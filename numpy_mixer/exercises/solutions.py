"""Worked solutions to the exercises: look here after you have tried.

Written out on their own (not imported from numpy_mixer.layers) so that each one reads alone;
each passes check(name, solutions.name). Shapes: B batch, N tokens, C channels, T token-MLP
width, H channel-MLP width, P patch, G patches per side, K classes.
"""
import math

import numpy as np
from PIL import Image


def patchify(x, patch_size=16):
    """[B, 3, H, W] -> [B, N, 3*P*P], each patch flattened (c, h, w), tokens row by row."""
    B, c, height, width = x.shape
    P = patch_size
    patches = x.reshape(B, c, height // P, P, width // P, P)  # [B, 3, Gh, P, Gw, P]
    patches = patches.transpose(0, 2, 4, 1, 3, 5)  # [B, Gh, Gw, 3, P, P]
    return patches.reshape(B, (height // P) * (width // P), c * P * P)


def stem(x, proj, patch_size=16):
    """The stride-P conv as patchify + one matmul. [B, 3, H, W] -> [B, N, C]"""
    weight, bias = proj["weight"], proj["bias"]  # [C, 3, P, P], [C]
    return patchify(x, patch_size) @ weight.reshape(weight.shape[0], -1).T + bias  # [B, N, 3PP] @ [3PP, C]


def layer_norm(x, weight, bias, eps=1e-6):
    """Biased variance, eps inside the sqrt, float32 kept. [..., C] -> [..., C]"""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(eps)) * weight + bias


def erf(x):
    """Abramowitz & Stegun 7.1.26 on |x| (max error 1.5e-7), with erf's odd symmetry. [...] -> [...]"""
    a = np.abs(x)
    t = 1 / (1 + np.float32(0.3275911) * a)
    coefficients = np.array([1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592], np.float32)
    poly = np.zeros_like(t)
    for c in coefficients:  # Horner: (((a5 t + a4) t + a3) t + a2) t + a1
        poly = poly * t + c
    return np.sign(x) * (1 - poly * t * np.exp(-a * a))


def erf_exact(x):
    """Another way: Python's math.erf on each element (slow but exact), back to x's dtype."""
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


def gelu(x):
    """x * Phi(x), the exact (erf) GELU. [...] -> [...]"""
    return np.float32(0.5) * x * (1 + erf(x * np.float32(1 / math.sqrt(2))))


def linear(x, weight, bias):
    """torch's Linear: weight is [out, in]. [..., in] -> [..., out]"""
    return x @ weight.T + bias


def mlp(x, fc1, fc2):
    """fc1 -> GELU -> fc2. [..., D] -> [..., hidden] -> [..., D]"""
    return linear(gelu(linear(x, fc1["weight"], fc1["bias"])), fc2["weight"], fc2["bias"])


def token_mixing(x, norm1, mlp_tokens):
    """[B, N, C] -> [B, N, C]"""
    y = layer_norm(x, norm1["weight"], norm1["bias"])  # [B, N, C]
    y = mlp(y.swapaxes(1, 2), **mlp_tokens)  # [B, C, N] -> [B, C, T] -> [B, C, N]
    return x + y.swapaxes(1, 2)


def channel_mixing(x, norm2, mlp_channels):
    """[B, N, C] -> [B, N, C]"""
    return x + mlp(layer_norm(x, norm2["weight"], norm2["bias"]), **mlp_channels)  # [B, N, C] -> [B, N, H] -> [B, N, C]


def mixer_block(x, norm1, mlp_tokens, norm2, mlp_channels):
    """[B, N, C] -> [B, N, C]"""
    return channel_mixing(token_mixing(x, norm1, mlp_tokens), norm2, mlp_channels)


def global_pool(x):
    """[B, N, C] -> [B, C]"""
    return x.mean(axis=1)


def forward(x, params, patch_size=16):
    """[B, 3, H, W] -> [B, K]"""
    x = stem(x, params["stem"]["proj"], patch_size)  # [B, N, C]
    for block in params["blocks"]:
        x = mixer_block(x, **block)
    x = layer_norm(x, params["norm"]["weight"], params["norm"]["bias"])
    return linear(global_pool(x), params["head"]["weight"], params["head"]["bias"])  # [B, C] -> [B, K]


def preprocess(img, size=224, crop_pct=0.875):
    """[H, W, 3] uint8 -> [3, 224, 224] float32, as timm's eval transform for the goog Mixer weights."""
    pil = Image.fromarray(img)
    w, h = pil.size
    short = math.floor(size / crop_pct)  # 256
    if w <= h:
        new_w, new_h = short, int(short * h / w)
    else:
        new_w, new_h = int(short * w / h), short
    pil = pil.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = int(round((new_w - size) / 2)), int(round((new_h - size) / 2))
    pil = pil.crop((left, top, left + size, top + size))
    x = np.asarray(pil, np.float32) / np.float32(255)  # [S, S, 3] in [0, 1]
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return x.transpose(2, 0, 1)  # [3, S, S]

"""Wrong forward answers, written as a learner would write them, before the mistake catalogue was broadened.

Each entry: (exercise, wrong function, words the hint must contain to count as the right hint). They were
written without reading numpy_mixer/exercises/mistakes.py, from the ways people get these layers wrong:
other activations and normalisations, block orders, residual placements, pooling, transposes, channel
orders, resize and crop rounding. `measure()` runs the checker on all of them and returns the share that
gets the right hint; tests/test_exercises.py holds the share, and the issue-13 report quotes it:
before the catalogue was broadened, 7 of these 35 got the right hint, 3 a misleading one, 24 none and 1 passed;
after, all 35 get the right hint.

Run: PYTHONPATH=$PWD python tests/exercise_wrong_answers.py
"""
import math

import numpy as np
from PIL import Image

f32 = np.float32


# --- right building blocks, as a learner has them by then --------------------------------------------

def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


def _gelu(x):
    return f32(0.5) * x * (1 + _erf(x / f32(math.sqrt(2))))


def _ln(x, weight, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + f32(eps)) * weight + bias


def _mlp(x, fc1, fc2, act=_gelu):
    return act(x @ fc1["weight"].T + fc1["bias"]) @ fc2["weight"].T + fc2["bias"]


def _tok(x, norm1, mlp_tokens):
    return x + _mlp(_ln(x, **norm1).swapaxes(1, 2), **mlp_tokens).swapaxes(1, 2)


def _chan(x, norm2, mlp_channels):
    return x + _mlp(_ln(x, **norm2), **mlp_channels)


def _stem(x, proj, P):
    B, c, h, w = x.shape
    t = x.reshape(B, c, h // P, P, w // P, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, -1, c * P * P)
    return t @ proj["weight"].reshape(proj["weight"].shape[0], -1).T + proj["bias"]


# --- activations ---------------------------------------------------------------------------------------

def gelu_silu(x):
    return x / (1 + np.exp(-x))  # SiLU / swish


def gelu_phi_only(x):
    return f32(0.5) * (1 + _erf(x / f32(math.sqrt(2))))  # Phi(x), forgot the x


def gelu_relu(x):
    return np.maximum(x, 0)


def mlp_silu(x, fc1, fc2):
    return _mlp(x, fc1, fc2, act=gelu_silu)


def mlp_act_after_fc2(x, fc1, fc2):
    return _gelu(_mlp(x, fc1, fc2))


def channel_mixing_silu(x, norm2, mlp_channels):
    return x + _mlp(_ln(x, **norm2), **mlp_channels, act=gelu_silu)


def forward_tanh_gelu(x, params, patch_size=16):
    def tanh_gelu(v):
        return f32(0.5) * v * (1 + np.tanh(f32(math.sqrt(2 / math.pi)) * (v + f32(0.044715) * v ** 3)))
    y = _stem(x, params["stem"]["proj"], patch_size)
    for b in params["blocks"]:
        y = y + _mlp(_ln(y, **b["norm1"]).swapaxes(1, 2), **b["mlp_tokens"], act=tanh_gelu).swapaxes(1, 2)
        y = y + _mlp(_ln(y, **b["norm2"]), **b["mlp_channels"], act=tanh_gelu)
    y = _ln(y, **params["norm"]).mean(1)
    return y @ params["head"]["weight"].T + params["head"]["bias"]


# --- normalisations ------------------------------------------------------------------------------------

def layer_norm_rms(x, weight, bias, eps=1e-6):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + f32(eps)) * weight + bias  # RMSNorm


def layer_norm_no_centering(x, weight, bias, eps=1e-6):
    return x / np.sqrt(x.var(-1, keepdims=True) + f32(eps)) * weight + bias


def layer_norm_weight_bias_swapped(x, weight, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + f32(eps)) * bias + weight


def layer_norm_axis_tokens(x, weight, bias, eps=1e-6):
    mu = x.mean(-2, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-2, keepdims=True) + f32(eps)) * weight + bias


def token_mixing_rms(x, norm1, mlp_tokens):
    return x + _mlp(layer_norm_rms(x, **norm1).swapaxes(1, 2), **mlp_tokens).swapaxes(1, 2)


def channel_mixing_no_norm(x, norm2, mlp_channels):
    return x + _mlp(x, **mlp_channels)


# --- transposes ---------------------------------------------------------------------------------------

def token_mixing_dot_T(x, norm1, mlp_tokens):
    return x + _mlp(_ln(x, **norm1).T, **mlp_tokens).T  # .T reverses all three axes


def token_mixing_swap01(x, norm1, mlp_tokens):
    return x + _mlp(_ln(x, **norm1).swapaxes(0, 1), **mlp_tokens).swapaxes(0, 1)


def mixer_block_dot_T(x, norm1, mlp_tokens, norm2, mlp_channels):
    x = x + _mlp(_ln(x, **norm1).T, **mlp_tokens).T
    return _chan(x, norm2, mlp_channels)


# --- block order and residuals --------------------------------------------------------------------------

def token_mixing_post_norm(x, norm1, mlp_tokens):
    return _ln(x + _mlp(x.swapaxes(1, 2), **mlp_tokens).swapaxes(1, 2), **norm1)


def channel_mixing_post_norm(x, norm2, mlp_channels):
    return _ln(x + _mlp(x, **mlp_channels), **norm2)


def mixer_block_post_norm(x, norm1, mlp_tokens, norm2, mlp_channels):
    x = _ln(x + _mlp(x.swapaxes(1, 2), **mlp_tokens).swapaxes(1, 2), **norm1)
    return _ln(x + _mlp(x, **mlp_channels), **norm2)


def mixer_block_skip_from_input(x, norm1, mlp_tokens, norm2, mlp_channels):
    y = _tok(x, norm1, mlp_tokens)
    return x + _mlp(_ln(y, **norm2), **mlp_channels)  # the second residual adds the block's input


def mixer_block_one_residual(x, norm1, mlp_tokens, norm2, mlp_channels):
    y = _mlp(_ln(x, **norm1).swapaxes(1, 2), **mlp_tokens).swapaxes(1, 2)
    return x + _mlp(_ln(y, **norm2), **mlp_channels)  # one residual around the whole block


def channel_mixing_normed_residual(x, norm2, mlp_channels):
    y = _ln(x, **norm2)
    return y + _mlp(y, **mlp_channels)


# --- pooling and the whole model ---------------------------------------------------------------------------

def global_pool_sum(x):
    return x.sum(1)


def global_pool_batch(x):
    return x.mean(0)


def forward_pool_before_norm(x, params, patch_size=16):
    y = _stem(x, params["stem"]["proj"], patch_size)
    for b in params["blocks"]:
        y = _chan(_tok(y, b["norm1"], b["mlp_tokens"]), b["norm2"], b["mlp_channels"])
    y = _ln(y.mean(1), **params["norm"])  # pooled, then normalised
    return y @ params["head"]["weight"].T + params["head"]["bias"]


def forward_post_norm(x, params, patch_size=16):
    y = _stem(x, params["stem"]["proj"], patch_size)
    for b in params["blocks"]:
        y = mixer_block_post_norm(y, **b)
    y = _ln(y, **params["norm"]).mean(1)
    return y @ params["head"]["weight"].T + params["head"]["bias"]


# --- patches ----------------------------------------------------------------------------------------------

def patchify_strided(x, patch_size=16):
    B, c, h, w = x.shape
    P = patch_size
    t = x.reshape(B, c, P, h // P, P, w // P).transpose(0, 3, 5, 1, 2, 4)  # [B, G, G, 3, P, P], every G-th pixel
    return t.reshape(B, -1, c * P * P)


def patchify_hwc(x, patch_size=16):
    B, c, h, w = x.shape
    P = patch_size
    return x.reshape(B, c, h // P, P, w // P, P).transpose(0, 2, 4, 3, 5, 1).reshape(B, -1, c * P * P)


# --- preprocessing ------------------------------------------------------------------------------------------

def _prep(img, long_side=int, offset=lambda d: int(round(d / 2)), resample=Image.Resampling.BICUBIC, bgr=False):
    pil = Image.fromarray(img)
    w, h = pil.size
    if w <= h:
        size = (256, long_side(256 * h / w))
    else:
        size = (long_side(256 * w / h), 256)
    pil = pil.resize(size, resample)
    left, top = offset(size[0] - 224), offset(size[1] - 224)
    x = np.asarray(pil.crop((left, top, left + 224, top + 224)), f32) / f32(255)
    if bgr:
        x = x[..., ::-1]
    return ((x - f32(0.5)) / f32(0.5)).transpose(2, 0, 1)


def preprocess_round_long_side(img):
    return _prep(img, long_side=round)


def preprocess_ceil_long_side(img):
    return _prep(img, long_side=math.ceil)


def preprocess_floor_offset(img):
    return _prep(img, offset=lambda d: d // 2)


def preprocess_half_up_offset(img):
    return _prep(img, offset=lambda d: int(d / 2 + 0.5))


def preprocess_bilinear(img):
    return _prep(img, resample=Image.Resampling.BILINEAR)


def preprocess_bgr(img):
    return _prep(img, bgr=True)


def preprocess_square_256(img):
    pil = Image.fromarray(img).resize((256, 256), Image.Resampling.BICUBIC)
    x = np.asarray(pil.crop((16, 16, 240, 240)), f32) / f32(255)
    return ((x - f32(0.5)) / f32(0.5)).transpose(2, 0, 1)


WRONG_FORWARD = [
    ("gelu", gelu_silu, ["SiLU"]),
    ("gelu", gelu_phi_only, ["Phi(x)", "times x"]),
    ("gelu", gelu_relu, ["ReLU"]),
    ("mlp", mlp_silu, ["SiLU"]),
    ("mlp", mlp_act_after_fc2, ["after fc2"]),
    ("channel_mixing", channel_mixing_silu, ["SiLU"]),
    ("forward", forward_tanh_gelu, ["tanh GELU"]),
    ("layer_norm", layer_norm_rms, ["RMSNorm"]),
    ("layer_norm", layer_norm_no_centering, ["mean"]),
    ("layer_norm", layer_norm_weight_bias_swapped, ["weight and bias swapped"]),
    ("layer_norm", layer_norm_axis_tokens, ["wrong axis"]),
    ("token_mixing", token_mixing_rms, ["RMSNorm"]),
    ("channel_mixing", channel_mixing_no_norm, ["no LayerNorm"]),
    ("token_mixing", token_mixing_dot_T, [".T", "axes 1 and 2"]),
    ("token_mixing", token_mixing_swap01, ["axes 0 and 1", "axes 1 and 2"]),
    ("mixer_block", mixer_block_dot_T, [".T", "axes 1 and 2"]),
    ("token_mixing", token_mixing_post_norm, ["post-norm"]),
    ("channel_mixing", channel_mixing_post_norm, ["post-norm"]),
    ("mixer_block", mixer_block_post_norm, ["post-norm"]),
    ("mixer_block", mixer_block_skip_from_input, ["block's input"]),
    ("mixer_block", mixer_block_one_residual, ["one residual"]),
    ("channel_mixing", channel_mixing_normed_residual, ["normalised input"]),
    ("global_pool", global_pool_sum, ["sum instead of mean"]),
    ("global_pool", global_pool_batch, ["batch"]),
    ("forward", forward_pool_before_norm, ["before the final"]),
    ("forward", forward_post_norm, ["post-norm"]),
    ("patchify", patchify_strided, ["every G-th pixel"]),
    ("patchify", patchify_hwc, ["(h, w, c)"]),
    ("preprocess", preprocess_round_long_side, ["round", "int("]),
    ("preprocess", preprocess_ceil_long_side, ["ceil", "int("]),
    ("preprocess", preprocess_floor_offset, ["offset", "round"]),
    ("preprocess", preprocess_half_up_offset, ["offset", "round"]),
    ("preprocess", preprocess_bilinear, ["bilinear"]),
    ("preprocess", preprocess_bgr, ["BGR"]),
    ("preprocess", preprocess_square_256, ["256 x 256"]),
]


def measure(entries=WRONG_FORWARD, verbose=False):
    """(right hints, misleading hints, no hint, passed) over the entries; each a list of verdict lines."""
    from numpy_mixer.exercises import verdict
    right, misleading, silent, passed = [], [], [], []
    for name, fn, words in entries:
        ok, line = verdict(name, fn)
        hint = line.split(" - looks like: ", 1)[1] if " - looks like: " in line else None
        if ok:
            passed.append(f"{fn.__name__}: {line}")
        elif hint is None:
            silent.append(f"{fn.__name__}: {line}")
        elif all(w in hint for w in words):
            right.append(f"{fn.__name__}: {line}")
        else:
            misleading.append(f"{fn.__name__}: {line}")
    if verbose:
        for title, lines in [("right hint", right), ("misleading hint", misleading), ("no hint", silent),
                             ("passed", passed)]:
            print(f"--- {title}: {len(lines)} of {len(entries)}")
            for line in lines:
                print("   ", line[:300])
    return right, misleading, silent, passed


if __name__ == "__main__":
    measure(verbose=True)

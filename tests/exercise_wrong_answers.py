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


# --- held out: 13 more, written after the catalogue was broadened, to see how far the diagnosis generalises ----
# Measured once as written: 3 of 13 got the right hint, 10 none, none a misleading one, none passed. Seven
# variants (no sqrt, RMSNorm with eps outside, the kernel flattened (h, w, c), norm1 twice, no stem bias, crop
# then resize) and two patterns (an extra size-1 axis; patchify's value-by-value source analysis) were added
# after that, so the 11 of 13 they get now is no longer a held-out figure.

def layer_norm_std_squared(x, weight, bias, eps=1e-6):
    return (x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) ** 2 + f32(eps)) * weight + bias


def layer_norm_rms_eps_outside(x, weight, bias, eps=1e-6):
    return x / (np.sqrt((x * x).mean(-1, keepdims=True)) + f32(eps)) * weight + bias


def gelu_erf_without_sqrt2_tanh(x):
    return f32(0.5) * x * (1 + np.tanh(x))


def gelu_x_sigmoid_x(x):
    return x * (1 / (1 + np.exp(-x)))


def linear_bias_first(x, weight, bias):
    return (x + bias[: x.shape[-1]]) @ weight.T if bias.shape[0] == x.shape[-1] else x @ weight.T - bias


def token_mixing_einsum_wrong(x, norm1, mlp_tokens):
    y = _ln(x, **norm1)
    h = np.einsum("bnc,tc->bnt", y, mlp_tokens["fc1"]["weight"]) if y.shape[1] == y.shape[2] else y
    return x + h if h.shape == x.shape else x


def token_mixing_moveaxis_wrong(x, norm1, mlp_tokens):
    y = np.moveaxis(_ln(x, **norm1), 0, -1)  # [N, C, B]: the batch last
    return x + np.moveaxis(_mlp(y, **mlp_tokens), -1, 0)


def mixer_block_shared_norm(x, norm1, mlp_tokens, norm2, mlp_channels):
    x = _tok(x, norm1, mlp_tokens)
    return _chan(x, norm1, mlp_channels)  # norm1 twice


def mixer_block_channel_then_token(x, norm1, mlp_tokens, norm2, mlp_channels):
    return _tok(_chan(x, norm2, mlp_channels), norm1, mlp_tokens)


def global_pool_keepdims(x):
    return x.mean(axis=1, keepdims=True)


def forward_no_stem_bias(x, params, patch_size=16):
    proj = dict(params["stem"]["proj"], bias=np.zeros_like(params["stem"]["proj"]["bias"]))
    y = _stem(x, proj, patch_size)
    for b in params["blocks"]:
        y = _chan(_tok(y, b["norm1"], b["mlp_tokens"]), b["norm2"], b["mlp_channels"])
    return _ln(y, **params["norm"]).mean(1) @ params["head"]["weight"].T + params["head"]["bias"]


def stem_weight_flattened_wrong(x, proj, patch_size=16):
    B, c, h, w = x.shape
    P = patch_size
    t = x.reshape(B, c, h // P, P, w // P, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, -1, c * P * P)
    weight = proj["weight"].transpose(0, 2, 3, 1).reshape(proj["weight"].shape[0], -1)  # (h, w, c) kernel
    return t @ weight.T + proj["bias"]


def preprocess_antialias_off_nearest_crop_first(img):
    pil = Image.fromarray(img)
    w, h = pil.size
    s = min(w, h)
    pil = pil.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224),
                                                                                              Image.Resampling.BICUBIC)
    x = np.asarray(pil, f32) / f32(255)
    return ((x - f32(0.5)) / f32(0.5)).transpose(2, 0, 1)


def preprocess_uint8_overflow(img):
    x = _prep(img)
    return np.round((x * f32(0.5) + f32(0.5)) * 255).astype(np.uint8).astype(f32) / f32(127.5) - 1


def patchify_transposed_grid_and_patch(x, patch_size=16):
    B, c, h, w = x.shape
    P = patch_size
    return x.reshape(B, c, h // P, P, w // P, P).transpose(0, 4, 2, 1, 5, 3).reshape(B, -1, c * P * P)


HELD_OUT = [
    ("layer_norm", layer_norm_std_squared, ["variance"]),
    ("layer_norm", layer_norm_rms_eps_outside, ["RMSNorm"]),
    ("gelu", gelu_erf_without_sqrt2_tanh, ["GELU"]),
    ("gelu", gelu_x_sigmoid_x, ["SiLU"]),
    ("linear", linear_bias_first, ["bias"]),
    ("token_mixing", token_mixing_moveaxis_wrong, ["axes 1 and 2"]),
    ("mixer_block", mixer_block_shared_norm, ["norm"]),
    ("mixer_block", mixer_block_channel_then_token, ["tokens first"]),
    ("global_pool", global_pool_keepdims, ["keepdims"]),
    ("forward", forward_no_stem_bias, ["bias"]),
    ("stem", stem_weight_flattened_wrong, ["(h, w, c)"]),
    ("preprocess", preprocess_antialias_off_nearest_crop_first, ["crop"]),
    ("patchify", patchify_transposed_grid_and_patch, ["column", "(c, w, h)"]),
]

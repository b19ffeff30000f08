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
    """Biased variance, eps inside the sqrt, the dtype kept. [..., C] -> [..., C]"""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + x.dtype.type(eps)) * weight + bias


def _erf32(x):
    """Abramowitz & Stegun 7.1.26 on |x| (max error 1.5e-7), with erf's odd symmetry. [...] -> [...]"""
    a = np.abs(x)
    t = 1 / (1 + np.float32(0.3275911) * a)
    coefficients = np.array([1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592], np.float32)
    poly = np.zeros_like(t)
    for c in coefficients:  # Horner: (((a5 t + a4) t + a3) t + a2) t + a1
        poly = poly * t + c
    return np.sign(x) * (1 - poly * t * np.exp(-a * a))


def erf(x):
    """Abramowitz & Stegun 7.1.26 on |x| (max error 1.5e-7), with erf's odd symmetry. [...] -> [...]"""
    return _erf32(x)


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


# --- cost ---------------------------------------------------------------------------------------------------

def cost(config):
    """Parameters and matmul multiply-adds of one MixerBlock and of the whole MlpMixer, for one image."""
    P, C, T, H, K = (config[k] for k in ("patch_size", "embed_dim", "tokens_dim", "channels_dim", "num_classes"))
    N = (config["img_size"] // P) ** 2  # tokens
    patch = config["in_chans"] * P * P  # values per patch

    def linear(n_in, n_out, rows):
        """(parameters, multiply-adds) of a Linear(n_in, n_out) applied to `rows` rows."""
        return n_in * n_out + n_out, rows * n_in * n_out

    token_mlp = [linear(N, T, C), linear(T, N, C)]  # acts on each of the C channels: C rows of N tokens
    channel_mlp = [linear(C, H, N), linear(H, C, N)]  # acts on each of the N tokens: N rows of C channels
    block_params = 2 * 2 * C + sum(p for p, _ in token_mlp + channel_mlp)  # norm1, norm2: weight and bias each
    block_macs = sum(m for _, m in token_mlp + channel_mlp)
    stem_params, stem_macs = linear(patch, C, N)  # the P x P stride-P conv, as a matmul on the patches
    head_params, head_macs = linear(C, K, 1) if K else (0, 0)  # on the pooled vector
    return {"block_params": block_params, "block_macs": block_macs,
            "params": stem_params + config["depth"] * block_params + 2 * C + head_params,  # + the final norm
            "macs": stem_macs + config["depth"] * block_macs + head_macs}


# --- backward: dout and the forward's inputs in, (dx, grads shaped like the weights) out ------------------------

def linear_backward(dout, x, weight, bias):
    """y = x @ weight.T + bias. dout [..., out] -> dx [..., in], {"weight": [out, in], "bias": [out]}"""
    dx = dout @ weight  # [..., out] @ [out, in]
    d2 = dout.reshape(-1, dout.shape[-1])  # [M, out]: every leading axis is a row that shares the weights
    x2 = x.reshape(-1, x.shape[-1])  # [M, in]
    return dx, {"weight": d2.T @ x2, "bias": d2.sum(axis=0)}  # sums over the M rows


def layer_norm_backward(dout, x, weight, bias, eps=1e-6):
    """dout [..., C] -> dx [..., C], {"weight": [C], "bias": [C]}"""
    C = x.shape[-1]
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1 / np.sqrt(var + x.dtype.type(eps))  # [..., 1]
    xhat = (x - mean) * rstd  # [..., C]
    dxhat = dout * weight
    # x reaches xhat directly, through the mean, and through the variance: three terms
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, {"weight": (dout * xhat).reshape(-1, C).sum(axis=0), "bias": dout.reshape(-1, C).sum(axis=0)}


def gelu_backward(dout, x):
    """d/dx x Phi(x) = Phi(x) + x phi(x). [...] -> [...]"""
    t = x.dtype.type
    Phi = t(0.5) * (1 + _erf_any(x * t(1 / math.sqrt(2))))  # the normal CDF
    phi = np.exp(t(-0.5) * x * x) * t(1 / math.sqrt(2 * math.pi))  # the normal density
    return dout * (Phi + x * phi)


def _erf_any(x):
    """A&S 7.1.26 in float32; math.erf elementwise in float64 (where 1.5e-7 is not enough). [...] -> [...]"""
    return np.vectorize(math.erf, otypes=[np.float64])(x) if x.dtype == np.float64 else _erf32(x)


def softmax_cross_entropy_backward(logits, labels):
    """The mean cross-entropy's gradient. [B, K], [B] -> [B, K]"""
    B = logits.shape[0]
    z = logits - logits.max(axis=-1, keepdims=True)  # stable: exp cannot overflow
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)  # softmax
    p[np.arange(B), labels] -= 1  # minus the one-hot of the labels
    return p / logits.dtype.type(B)  # the loss is a mean over the batch


def _mlp_backward(dout, x, fc1, fc2):
    """Back through fc1 -> GELU -> fc2 (the hidden values recomputed). -> (dx, {"fc1", "fc2"})"""
    h = x @ fc1["weight"].T + fc1["bias"]  # [..., hidden]
    da, dfc2 = linear_backward(dout, _gelu_any(h), fc2["weight"], fc2["bias"])
    dh = gelu_backward(da, h)
    dx, dfc1 = linear_backward(dh, x, fc1["weight"], fc1["bias"])
    return dx, {"fc1": dfc1, "fc2": dfc2}


def _gelu_any(x):
    """gelu in x's dtype (float32 or float64)."""
    return x.dtype.type(0.5) * x * (1 + _erf_any(x * x.dtype.type(1 / math.sqrt(2))))


def token_mixing_backward(dout, x, norm1, mlp_tokens):
    """dout [B, N, C] -> dx [B, N, C], {"norm1": ..., "mlp_tokens": ...}"""
    y = layer_norm(x, norm1["weight"], norm1["bias"])  # [B, N, C]
    dyt, dmlp = _mlp_backward(dout.swapaxes(1, 2), y.swapaxes(1, 2), **mlp_tokens)  # [B, C, N]: a transpose's
    dx_norm, dnorm = layer_norm_backward(dyt.swapaxes(1, 2), x, **norm1)  # backward is the same transpose
    return dout + dx_norm, {"norm1": dnorm, "mlp_tokens": dmlp}  # the skip passes dout on unchanged


def channel_mixing_backward(dout, x, norm2, mlp_channels):
    """dout [B, N, C] -> dx [B, N, C], {"norm2": ..., "mlp_channels": ...}"""
    y = layer_norm(x, norm2["weight"], norm2["bias"])
    dy, dmlp = _mlp_backward(dout, y, **mlp_channels)
    dx_norm, dnorm = layer_norm_backward(dy, x, **norm2)
    return dout + dx_norm, {"norm2": dnorm, "mlp_channels": dmlp}


def _token_mixing_any(x, norm1, mlp_tokens):
    y = layer_norm(x, norm1["weight"], norm1["bias"]).swapaxes(1, 2)
    fc1, fc2 = mlp_tokens["fc1"], mlp_tokens["fc2"]
    y = _gelu_any(y @ fc1["weight"].T + fc1["bias"]) @ fc2["weight"].T + fc2["bias"]
    return x + y.swapaxes(1, 2)


def mixer_block_backward(dout, x, norm1, mlp_tokens, norm2, mlp_channels):
    """Last in, first out: channel mixing's backward, then token mixing's. [B, N, C] -> [B, N, C]"""
    mid = _token_mixing_any(x, norm1, mlp_tokens)  # channel mixing's input
    dmid, dchannel = channel_mixing_backward(dout, mid, norm2, mlp_channels)
    dx, dtoken = token_mixing_backward(dmid, x, norm1, mlp_tokens)
    return dx, {**dtoken, **dchannel}


def global_pool_head_backward(dout, x, weight, bias):
    """logits = mean over tokens, then the head. dout [B, K] -> dx [B, N, C], {"weight": [K, C], "bias": [K]}"""
    B, N, C = x.shape
    dpooled, dhead = linear_backward(dout, x.mean(axis=1), weight, bias)  # [B, C]
    return np.repeat(dpooled[:, None, :] / x.dtype.type(N), N, axis=1), dhead  # each token had weight 1/N

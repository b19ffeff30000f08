"""The classic mistakes, written out: each layer once more, with a switch for each way to get it wrong.

The checker runs these on the exercise's own inputs and compares the learner's wrong answer
with every variant: the one it matches names the mistake. The right answer is the default of
every switch (and equals numpy_mixer.layers), so a variant differs from it in one place only.
Weights keep PyTorch's layout, [out, in]; shapes as in numpy_mixer/layers.py (B, N, C, T, H, P, G, K).
"""
import math

import numpy as np
from PIL import Image

from .. import layers
from ..preprocess import _INTERPOLATION, center_crop, resize_shorter_side


# --- LayerNorm, erf, GELU -------------------------------------------------------------------------

def layer_norm(x, weight, bias, eps=1e-6, ddof=0, axis=-1, eps_outside=False, affine=True, kind="layer",
               swap_affine=False):
    """LayerNorm with knobs: ddof=1 (unbiased variance), another axis, eps outside the sqrt, no weight/bias,
    kind "rms" (RMSNorm: no mean, root mean square) or "no_center" (the variance right, the mean not
    subtracted), swap_affine (x_hat * bias + weight)."""
    mean = x.mean(axis=axis, keepdims=True)
    var = ((x - mean) ** 2).sum(axis=axis, keepdims=True) / x.dtype.type(_count(x, axis) - ddof)
    eps = x.dtype.type(eps)
    centred = x - mean
    if kind == "rms":
        centred, var = x, (x * x).mean(axis=axis, keepdims=True)
    elif kind == "no_center":
        centred = x
    elif kind == "no_sqrt":  # divided by var + eps, not by its square root
        return (centred / (var + eps)) * weight + bias if affine else centred / (var + eps)
    y = centred / (np.sqrt(var) + eps if eps_outside else np.sqrt(var + eps))
    if not affine:
        return y
    return y * bias + weight if swap_affine else y * weight + bias


def _count(x, axis):
    axes = range(x.ndim) if axis is None else np.atleast_1d(axis)
    return int(np.prod([x.shape[a] for a in axes]))


def erf_abramowitz_stegun(x):
    """Abramowitz & Stegun 7.1.26, as written for x >= 0 only (no odd-symmetry step): wrong for x < 0."""
    t = 1 / (1 + x.dtype.type(0.3275911) * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (1 - poly.astype(x.dtype) * np.exp(-x * x)).astype(x.dtype)


def gelu(x, kind="erf"):
    """GELU and the usual stand-ins: tanh approximation, sigmoid approximation, erf(x) without / sqrt(2)."""
    half = x.dtype.type(0.5)
    if kind == "erf":
        return layers.gelu(x)
    if kind == "tanh":  # torch.nn.GELU(approximate="tanh"), the GPT-2 / BERT formula
        c = x.dtype.type(math.sqrt(2 / math.pi))
        return half * x * (1 + np.tanh(c * (x + x.dtype.type(0.044715) * x ** 3)))
    if kind == "sigmoid":  # x * sigmoid(1.702 x)
        return x / (1 + np.exp(x.dtype.type(-1.702) * x))
    if kind == "no_sqrt2":  # x/2 (1 + erf(x)): forgot to divide by sqrt(2)
        return half * x * (1 + layers.erf(x))
    if kind == "no_half":  # x (1 + erf(x / sqrt 2)): forgot the 1/2
        return x * (1 + layers.erf(x * x.dtype.type(math.sqrt(0.5))))
    if kind == "silu":  # x * sigmoid(x), swish
        return x / (1 + np.exp(-x))
    if kind == "phi":  # Phi(x) alone: forgot to multiply by x
        return half * (1 + layers.erf(x * x.dtype.type(math.sqrt(0.5))))
    if kind == "relu":
        return np.maximum(x, 0)
    if kind == "none":
        return x
    raise ValueError(kind)


# --- linear, MLP ----------------------------------------------------------------------------------

def linear(x, weight, bias, transpose=True, use_bias=True):
    """x @ weight.T + bias, or the variants: x @ weight (no transpose), no bias."""
    y = x @ (weight.T if transpose else weight)
    return y + bias if use_bias else y


def mlp(x, fc1, fc2, act="erf", transpose=True, act_after_fc2=False):
    """fc1 -> act -> fc2, with the GELU, the weight transpose and a second GELU after fc2 as switches.
    [..., D] -> [..., D]"""
    h = gelu(linear(x, fc1["weight"], fc1["bias"], transpose), act)
    y = linear(h, fc2["weight"], fc2["bias"], transpose)
    return gelu(y, act) if act_after_fc2 else y


# --- patches ---------------------------------------------------------------------------------------

def patchify(x, patch_size=16, order="chw", grid="rows", method="transpose"):
    """[B, 3, H, W] -> [B, N, 3*P*P]; order of each patch's values (chw right, hwc, cwh), token order
    (rows right, columns), or method="reshape": a plain reshape that cuts rows, not tiles."""
    B, c, height, width = x.shape
    P = patch_size
    gh, gw = height // P, width // P
    if method == "reshape":
        return x.reshape(B, gh * gw, c * P * P)
    if method == "strided":  # split as [B, 3, P, G, P, G]: each "patch" takes every G-th pixel
        t = x.reshape(B, c, P, gh, P, gw).transpose(0, 3, 5, 1, 2, 4)
        return t.reshape(B, gh * gw, c * P * P)
    t = x.reshape(B, c, gh, P, gw, P)  # axes: b, c, gh, ph, gw, pw
    grid_axes = (2, 4) if grid == "rows" else (4, 2)
    patch_axes = {"chw": (1, 3, 5), "hwc": (3, 5, 1), "cwh": (1, 5, 3)}[order]
    return t.transpose(0, *grid_axes, *patch_axes).reshape(B, gh * gw, c * P * P)


def stem(x, proj, patch_size=16, order="chw", grid="rows", method="transpose", weight="right", use_bias=True):
    """Patch embedding with the patchify switches, plus the weight used as W (no .T) or reshaped as
    [3*P*P, C] (weight="flat_wrong"). [B, 3, H, W] -> [B, N, C]"""
    w, b = proj["weight"], proj["bias"]
    C = w.shape[0]
    patches = patchify(x, patch_size, order, grid, method)
    if weight == "right":
        y = patches @ w.reshape(C, -1).T
    elif weight == "no_transpose":
        y = patches @ w.reshape(C, -1)
    elif weight == "kernel_hwc":  # the kernel flattened (h, w, c), the patches (c, h, w)
        y = patches @ w.transpose(0, 2, 3, 1).reshape(C, -1).T
    elif weight == "flat_wrong":
        y = patches @ w.reshape(-1, C)
    else:
        raise ValueError(weight)
    return y + b if use_bias else y


# --- token mixing, channel mixing, the block ------------------------------------------------------

def _norm(x, norm, ln, place):
    """The normalisation before an MLP: LayerNorm with knobs, or none (place "none"/"post": not before)."""
    return x if place in ("none", "post") else layer_norm(x, norm["weight"], norm["bias"], **ln)


def token_mixing(x, norm1, mlp_tokens, transposes="swap", residual="x", act="erf", ln=None,
                 norm_after_transpose=False, norm="pre", act_after_fc2=False):
    """x + mlp_tokens(norm1(x) in [B, C, N]) in [B, N, C], with switches for each mistake:
    transposes "swap" (right) / "none" / "reshape"; residual "x" (right) / "none" / "normed";
    act for the GELU; ln: LayerNorm knobs; norm_after_transpose: normalise over tokens;
    norm "pre" (right) / "post" (LN(x + mlp(x)), the original Transformer's order) / "none". [B, N, C] -> [B, N, C]"""
    ln = ln or {}
    B, N, C = x.shape
    mlp_kw = dict(act=act, act_after_fc2=act_after_fc2)
    if norm_after_transpose:  # transpose first, then LayerNorm over the last axis (now the tokens)
        y = layer_norm(x.swapaxes(1, 2), norm1["weight"], norm1["bias"], **ln)
        y = mlp(y, **mlp_tokens, act=act).swapaxes(1, 2)
        return x + y
    normed = _norm(x, norm1, ln, norm)
    if transposes == "swap":
        y = mlp(normed.swapaxes(1, 2), **mlp_tokens, **mlp_kw).swapaxes(1, 2)
    elif transposes == "none":
        y = mlp(normed, **mlp_tokens, **mlp_kw)
    elif transposes == "reshape":
        y = mlp(normed.reshape(B, C, N), **mlp_tokens, **mlp_kw).reshape(B, N, C)
    else:
        raise ValueError(transposes)
    out = {"x": x + y, "none": y, "normed": normed + y}[residual]
    return layer_norm(out, norm1["weight"], norm1["bias"], **ln) if norm == "post" else out


def channel_mixing(x, norm2, mlp_channels, residual="x", act="erf", ln=None, transpose=True, mix_tokens=False,
                   norm="pre", act_after_fc2=False):
    """x + mlp_channels(norm2(x)), with switches: residual, act, ln knobs, weight transpose,
    mix_tokens (the MLP applied across tokens, as a token mixing), norm "pre" / "post" / "none".
    [B, N, C] -> [B, N, C]"""
    ln = ln or {}
    normed = _norm(x, norm2, ln, norm)
    kw = dict(act=act, transpose=transpose, act_after_fc2=act_after_fc2)
    if mix_tokens:
        y = mlp(normed.swapaxes(1, 2), **mlp_channels, **kw).swapaxes(1, 2)
    else:
        y = mlp(normed, **mlp_channels, **kw)
    out = {"x": x + y, "none": y, "normed": normed + y}[residual]
    return layer_norm(out, norm2["weight"], norm2["bias"], **ln) if norm == "post" else out


def mixer_block(x, norm1, mlp_tokens, norm2, mlp_channels, order="token_first", token=None, channel=None):
    """Token mixing then channel mixing; order "channel_first", "parallel" (both from the same x) or
    "swapped_norms" (norm2 in token mixing, norm1 in channel mixing); token/channel: switches for each half."""
    token, channel = token or {}, channel or {}
    if order == "token_first":
        return channel_mixing(token_mixing(x, norm1, mlp_tokens, **token), norm2, mlp_channels, **channel)
    if order == "channel_first":
        return token_mixing(channel_mixing(x, norm2, mlp_channels, **channel), norm1, mlp_tokens, **token)
    if order == "parallel":
        t = token_mixing(x, norm1, mlp_tokens, **token) - x
        c = channel_mixing(x, norm2, mlp_channels, **channel) - x
        return x + t + c
    if order == "swapped_norms":
        return channel_mixing(token_mixing(x, norm2, mlp_tokens, **token), norm1, mlp_channels, **channel)
    if order == "norm1_twice":  # norm1 before both MLPs
        return channel_mixing(token_mixing(x, norm1, mlp_tokens, **token), norm1, mlp_channels, **channel)
    if order == "skip_from_input":  # the second residual adds the block's input, not token mixing's output
        y = token_mixing(x, norm1, mlp_tokens, **token)
        return x + channel_mixing(y, norm2, mlp_channels, residual="none", **channel)
    if order == "one_residual":  # x + channel(token(x)), no residual inside
        y = token_mixing(x, norm1, mlp_tokens, residual="none", **token)
        return x + channel_mixing(y, norm2, mlp_channels, residual="none", **channel)
    raise ValueError(order)


# --- pooling, the whole model ---------------------------------------------------------------------

def global_pool(x, kind="mean"):
    """Mean over the tokens, or: max over tokens, sum, the first token, mean over channels. [B, N, C] -> [B, C]"""
    if kind == "mean":
        return x.mean(axis=1)
    if kind == "max":
        return x.max(axis=1)
    if kind == "sum":
        return x.sum(axis=1)
    if kind == "first":
        return x[:, 0]
    if kind == "channels":
        return x.mean(axis=2)
    if kind == "batch":
        return x.mean(axis=0)
    raise ValueError(kind)


def forward(x, params, patch_size=16, pool="mean", final_norm=True, stem_kw=None, block=None, head=True,
            pool_before_norm=False):
    """The whole model with switches: pooling, the final norm (or pooling before it), the stem's and each
    block's mistakes, the head. [B, 3, H, W] -> [B, K]"""
    p = params
    y = stem(x, p["stem"]["proj"], patch_size, **(stem_kw or {}))  # [B, N, C]
    for blk in p["blocks"]:
        y = mixer_block(y, **blk, **(block or {}))
    if pool_before_norm:
        y = global_pool(y, pool)  # [B, C], then normalised
    if final_norm:
        y = layer_norm(y, p["norm"]["weight"], p["norm"]["bias"])
    if not pool_before_norm:
        y = global_pool(y, pool)  # [B, C]
    return linear(y, p["head"]["weight"], p["head"]["bias"]) if head and "head" in p else y


# --- preprocessing ---------------------------------------------------------------------------------

GOOG_MEAN, GOOG_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _resize_crop(pil, short, size, interpolation, long_side, offset):
    """Shorter side to `short`, the longer one long_side(short * long / short), then a size x size crop at
    offset(free pixels) from the left and the top: timm's is int() and int(round(d / 2))."""
    w, h = pil.size
    new = (short, long_side(short * h / w)) if w <= h else (long_side(short * w / h), short)
    pil = pil.resize(new, _INTERPOLATION[interpolation])
    left, top = offset(new[0] - size), offset(new[1] - size)
    return pil.crop((left, top, left + size, top + size))


LONG_SIDES = {"int": int, "round": round, "ceil": math.ceil}
OFFSETS = {"round": lambda d: int(round(d / 2)), "floor": lambda d: d // 2,
           "half_up": lambda d: int(math.floor(d / 2 + 0.5))}


def preprocess(img, interpolation="bicubic", crop="center", mean=GOOG_MEAN, std=GOOG_STD, chw=True,
               scale=True, size=224, crop_pct=0.875, long_side="int", offset="round", bgr=False):
    """timm's eval transform for mixer_b16_224.goog_in21k_ft_in1k, with switches: interpolation; crop
    "center" (right) / "squash" (resize straight to size x size) / "short_side" (shorter side to size,
    then crop: crop_pct ignored) / "square_256" (resized to 256 x 256, then the centre crop); the long
    side's rounding (LONG_SIDES), the crop offset's rounding (OFFSETS); bgr (channels reversed); mean/std;
    chw=False leaves HWC; scale=False skips / 255. [H, W, 3] uint8 -> [3, S, S]"""
    pil = Image.fromarray(img)
    if crop == "center" and (long_side, offset) != ("int", "round"):
        pil = _resize_crop(pil, math.floor(size / crop_pct), size, interpolation, LONG_SIDES[long_side],
                           OFFSETS[offset])
    elif crop == "center":
        pil = center_crop(resize_shorter_side(pil, math.floor(size / crop_pct), interpolation), size)
    elif crop == "squash":
        pil = pil.resize((size, size), _INTERPOLATION[interpolation])
    elif crop == "short_side":
        pil = center_crop(resize_shorter_side(pil, size, interpolation), size)
    elif crop == "crop_then_resize":  # the central square first, then resized to size x size
        w, h = pil.size
        short = min(w, h)
        left, top = (w - short) // 2, (h - short) // 2
        pil = pil.crop((left, top, left + short, top + short)).resize((size, size), _INTERPOLATION[interpolation])
    elif crop == "square_256":
        short = math.floor(size / crop_pct)
        pil = center_crop(pil.resize((short, short), _INTERPOLATION[interpolation]), size)
    else:
        raise ValueError(crop)
    x = np.asarray(pil, np.float32)
    if bgr:
        x = x[..., ::-1]
    if scale:
        x = x / np.float32(255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)  # [S, S, 3]
    return x.transpose(2, 0, 1) if chw else x


# --- backward passes, with a switch for each classic mistake -------------------------------------------
# Each takes the exercise's arguments (dout, the forward's inputs, the weights), recomputes what it needs
# of the forward, and returns (dx, grads) with grads shaped like the weights (timm's keys).

def linear_backward(dout, x, weight, bias, dx_with="weight", dweight="right", dbias="all"):
    """dx_with "weight" (right) / "weight.T"; dweight "right" / "transposed" (x.T @ dout) / "per_row" (not
    summed); dbias "all" (right) / "none" (dout itself) / "first" (summed over axis 0 only) / "mean"."""
    dx = dout @ (weight if dx_with == "weight" else weight.T)  # [..., out] @ [out, in]
    d2, x2 = dout.reshape(-1, dout.shape[-1]), x.reshape(-1, x.shape[-1])  # [M, out], [M, in]
    dw = {"right": lambda: d2.T @ x2, "transposed": lambda: x2.T @ d2,
          "per_row": lambda: dout[..., :, None] * x[..., None, :]}[dweight]()
    db = {"all": lambda: d2.sum(axis=0), "none": lambda: dout, "first": lambda: dout.sum(axis=0),
          "mean": lambda: d2.mean(axis=0)}[dbias]()
    return dx, {"weight": dw, "bias": db}


def layer_norm_backward(dout, x, weight, bias, eps=1e-6, terms="both", use_weight=True, sums="all"):
    """terms "both" (right) / "no_mean" / "no_var" / "neither"; use_weight=False: dxhat = dout; sums "none":
    dweight and dbias not summed over the rows."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1 / np.sqrt(var + x.dtype.type(eps))
    xhat = (x - mean) * rstd
    dxhat = dout * weight if use_weight else dout
    mean_term = dxhat.mean(axis=-1, keepdims=True) if terms in ("both", "no_var") else 0
    var_term = xhat * (dxhat * xhat).mean(axis=-1, keepdims=True) if terms in ("both", "no_mean") else 0
    dx = rstd * (dxhat - mean_term - var_term)
    C = x.shape[-1]
    if sums == "none":
        return dx, {"weight": dout * xhat, "bias": dout}
    return dx, {"weight": (dout * xhat).reshape(-1, C).sum(axis=0), "bias": dout.reshape(-1, C).sum(axis=0)}


def gelu_backward(dout, x, kind="right"):
    """kind "right": dout * (Phi + x phi); "no_x_pdf": dout * Phi; "pdf_no_x": dout * (Phi + phi);
    "no_dout": Phi + x phi (the chain rule forgotten); "tanh": the tanh approximation's derivative."""
    half = x.dtype.type(0.5)
    Phi = half * (1 + layers.erf(x * x.dtype.type(math.sqrt(0.5))))
    phi = np.exp(-half * x * x) * x.dtype.type(1 / math.sqrt(2 * math.pi))
    if kind == "tanh":
        c, k = x.dtype.type(math.sqrt(2 / math.pi)), x.dtype.type(0.044715)
        t = np.tanh(c * (x + k * x ** 3))
        return dout * (half * (1 + t) + half * x * (1 - t * t) * c * (1 + 3 * k * x * x))
    local = {"right": Phi + x * phi, "no_x_pdf": Phi, "pdf_no_x": Phi + phi, "no_dout": Phi + x * phi}[kind]
    return local if kind == "no_dout" else dout * local


def softmax_cross_entropy_backward(logits, labels, kind="right"):
    """kind "right": (softmax - one_hot) / B; "no_mean": not / B; "no_one_hot"; "sign": (one_hot - softmax) / B."""
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    one_hot = np.zeros_like(p)
    one_hot[np.arange(len(labels)), labels] = 1
    g = {"right": p - one_hot, "no_mean": p - one_hot, "no_one_hot": p, "sign": one_hot - p}[kind]
    return g if kind == "no_mean" else g / logits.dtype.type(len(labels))


def mlp_backward(dout, x, fc1, fc2, gelu_kind="right", dbias="all"):
    """Back through fc2, GELU, fc1 (the forward recomputed). -> (dx, {"fc1": ..., "fc2": ...})"""
    h = linear(x, fc1["weight"], fc1["bias"])
    a = gelu(h)
    da, dfc2 = linear_backward(dout, a, fc2["weight"], fc2["bias"], dbias=dbias)
    dh = gelu_backward(da, h, gelu_kind)
    dx, dfc1 = linear_backward(dh, x, fc1["weight"], fc1["bias"], dbias=dbias)
    return dx, {"fc1": dfc1, "fc2": dfc2}


def token_mixing_backward(dout, x, norm1, mlp_tokens, skip=True, transpose_in=True, transpose_back=True,
                          ln_terms="both", gelu_kind="right", dbias="all"):
    """skip=False: dx without dout (the residual's gradient lost); transpose_in=False: dout not swapped
    before the MLP's backward; transpose_back=False: its gradient not swapped back before LayerNorm's."""
    y = layers.layer_norm(x, **norm1)  # [B, N, C]
    yt = y.swapaxes(1, 2)  # [B, C, N]
    d_in = dout.swapaxes(1, 2) if transpose_in else dout
    dyt, dmlp = mlp_backward(d_in, yt, **mlp_tokens, gelu_kind=gelu_kind, dbias=dbias)  # [B, C, N]
    dy = dyt.swapaxes(1, 2) if transpose_back else dyt
    dx, dnorm = layer_norm_backward(dy, x, **norm1, terms=ln_terms)
    return (dout + dx if skip else dx), {"norm1": dnorm, "mlp_tokens": dmlp}


def channel_mixing_backward(dout, x, norm2, mlp_channels, skip=True, ln_terms="both", gelu_kind="right",
                            dbias="all"):
    y = layers.layer_norm(x, **norm2)
    dy, dmlp = mlp_backward(dout, y, **mlp_channels, gelu_kind=gelu_kind, dbias=dbias)
    dx, dnorm = layer_norm_backward(dy, x, **norm2, terms=ln_terms)
    return (dout + dx if skip else dx), {"norm2": dnorm, "mlp_channels": dmlp}


def mixer_block_backward(dout, x, norm1, mlp_tokens, norm2, mlp_channels, order="right", token=None, channel=None):
    """order "right": channel mixing's backward first, at token mixing's output; "forward_order": token
    mixing's backward first (and channel mixing's at the block's input); token/channel: switches of each half."""
    token, channel = token or {}, channel or {}
    if order == "forward_order":
        dmid, dtok = token_mixing_backward(dout, x, norm1, mlp_tokens, **token)
        dx, dch = channel_mixing_backward(dmid, x, norm2, mlp_channels, **channel)
        return dx, {**dtok, **dch}
    mid = layers.token_mixing(x, norm1, mlp_tokens)
    dmid, dch = channel_mixing_backward(dout, mid, norm2, mlp_channels, **channel)
    dx, dtok = token_mixing_backward(dmid, x, norm1, mlp_tokens, **token)
    return dx, {**dtok, **dch}


def global_pool_head_backward(dout, x, weight, bias, divide=True, dweight_from="mean", dx_with="weight"):
    """divide=False: every token gets the whole dout (the 1/N forgotten); dweight_from "sum": the head's
    input taken as the sum over tokens; dx_with "weight.T"."""
    B, N, C = x.shape
    pooled = x.mean(axis=1) if dweight_from == "mean" else x.sum(axis=1)  # [B, C]
    dpooled, dhead = linear_backward(dout, pooled, weight, bias, dx_with=dx_with)  # [B, C]
    share = dpooled / x.dtype.type(N) if divide else dpooled
    return np.repeat(share[:, None, :], N, axis=1), dhead  # [B, N, C]


# --- cost: parameters and multiply-adds, with a switch for each way to miscount ------------------------------

def cost(config, biases=True, norms=True, final_norm=True, head=True, stem=True, flops=False, token_rows="channels",
         blocks=None, bias_macs=False):
    """{"block_params", "block_macs", "params", "macs"}; matmul multiply-adds only, unless a switch says otherwise."""
    c = config
    P, C, T, H, K = c["patch_size"], c["embed_dim"], c["tokens_dim"], c["channels_dim"], c["num_classes"]
    N = (c["img_size"] // P) ** 2
    patch = c["in_chans"] * P * P

    def linear(n_in, n_out, rows):  # (params, macs) of a Linear applied to `rows` rows
        macs = rows * n_in * n_out + (rows * n_out if bias_macs else 0)
        return n_in * n_out + (n_out if biases else 0), macs

    token_rows = C if token_rows == "channels" else N
    layers_ = [linear(N, T, token_rows), linear(T, N, token_rows), linear(C, H, N), linear(H, C, N)]
    block_params = sum(p for p, _ in layers_) + (4 * C if norms else 0)
    block_macs = sum(m for _, m in layers_)
    stem_p, stem_m = linear(patch, C, N) if stem else (0, 0)
    head_p, head_m = linear(C, K, 1) if head and K else (0, 0)
    depth = c["depth"] if blocks is None else blocks
    params = stem_p + depth * block_params + (2 * C if norms and final_norm else 0) + head_p
    macs = stem_m + depth * block_macs + head_m
    scale = 2 if flops else 1
    return {"block_params": block_params, "block_macs": scale * block_macs, "params": params, "macs": scale * macs}

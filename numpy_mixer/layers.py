"""MLP-Mixer, one readable NumPy function per layer.

This is the specification: the fast path (numpy_mixer.fast) is tested against it.
Weights keep PyTorch's layout (`x @ weight.T + bias`) and every argument is named after
timm's state-dict keys, so a block runs as `mixer_block(x, **params["blocks"][i])`.

Dimension legend (sizes for mixer_b16_224):
    B  batch
    P  patch size               16
    G  patches per side         14   (224 / 16)
    N  tokens (patches)         196  (G * G)
    C  channels (hidden width)  768
    T  token-MLP width          384  (0.5 * C)
    H  channel-MLP width        3072 (4 * C)
    K  classes                  1000

Everything stays float32 when the inputs and weights are float32 (and float64 when they are
float64): no Python float is mixed in where NumPy would upcast.
Reference: timm/models/mlp_mixer.py (MlpMixer, MixerBlock) and arXiv 2105.01601.
"""
import numpy as np

# erf coefficients, fitted by tools/fit_erf.py (its output pasted here):
#   |x| < 1:   erf(x) = x + x * p(x^2)
#   |x| >= 1:  erf(x) = 1 - exp(-x^2) * q(min(|x|, top) - mid),   q(x) ~ erfc(x) * exp(x^2)
# Each form keeps the large term exact (x, or 1) and puts the fitted polynomial in a small
# correction, so rounding in the Horner sums stays below the last bit of the result.
# float32: max abs error < 1e-7; float64 (for the float64 parity run): < 1e-15.
_ERF_COEFFICIENTS = {
    np.dtype(np.float32): dict(
        top=4.0, mid=2.5,
        small=[0.12837917, -0.37612638, 0.11283784, -0.026865559, 0.005221423, -0.0008490202,
               0.00011313172, -9.80944e-06],
        large=[0.21080637, -0.07434734, 0.024937991, -0.0080016665, 0.002467088, -0.0007332285,
               0.00021087805, -5.94383e-05, 1.6146394e-05, -3.7884688e-06, 9.643879e-07,
               -4.1927024e-07, 1.0468311e-07]),
    np.dtype(np.float64): dict(
        top=6.0, mid=3.5,
        small=[0.12837916709551275, -0.37612638903192824, 0.11283791671380602, -0.02686617071391617,
               0.00522397819689334, -0.0008548355411528416, 0.00012056240802732822,
               -1.4945029762667147e-05, 1.6741415582573472e-06, -1.905132563857053e-07,
               3.131113684211193e-08, -7.0818112100306414e-09, 9.946080006149264e-10],
        large=[0.1552936556088948, -0.041323577833252044, 0.010661133192514445, -0.0026730744396444043,
               0.0006526863268288207, -0.00015546891823530975, 3.618170453562961e-05,
               -8.23798653048035e-06, 1.8371875604778697e-06, -4.0173984040822043e-07,
               8.621997168991649e-08, -1.8176474777123403e-08, 3.7668689833671725e-09,
               -7.680257901093061e-10, 1.541455259181919e-10, -3.0464337174196566e-11,
               5.9590294241435506e-12, -1.1418845864996872e-12, 2.0124047296982888e-13,
               -4.0120002366571625e-14, 1.2488066091958592e-14, -1.4150461116575057e-15,
               -8.23026038264828e-16, -3.52509000072736e-17, 1.558049545224815e-16,
               -2.3634365012540096e-18, -1.2804337244300664e-17, 4.043443094367273e-20,
               6.691184361467183e-19, -4.341702415126468e-21, -1.4561406330738044e-20]),
}


def _horner(coefs, v):
    """coefs[0] + coefs[1] * v + coefs[2] * v**2 + ..., in v's dtype."""
    coefs = np.asarray(coefs, v.dtype)
    out = np.full_like(v, coefs[-1])
    for c in coefs[-2::-1]:
        out = out * v + c
    return out


def erf(x):
    """The error function, elementwise, accurate to float32 / float64 (NumPy has none). [...] -> [...]"""
    x = np.asarray(x)
    if x.dtype not in _ERF_COEFFICIENTS:
        raise TypeError(f"erf takes float32 or float64, got {x.dtype}")
    c = _ERF_COEFFICIENTS[x.dtype]
    a = np.abs(x)
    s = np.minimum(a, 1)  # the small form is used below 1 only; clipping keeps it finite elsewhere
    small = s + s * _horner(c["small"], s * s)
    # past `top`, exp(-x^2) * q is below half an ulp of 1 and the result rounds to 1: clip there
    t = np.minimum(a, x.dtype.type(c["top"]))
    large = 1 - np.exp(-t * t) * _horner(c["large"], t - x.dtype.type(c["mid"]))
    return np.copysign(np.where(a < 1, small, large), x)


def gelu(x):
    """Exact GELU as torch.nn.GELU(): x * Phi(x) = x/2 * (1 + erf(x / sqrt(2))). [...] -> [...]"""
    half = x.dtype.type(0.5)
    return half * x * (1 + erf(x * x.dtype.type(np.sqrt(0.5))))


def layer_norm(x, weight, bias, eps=1e-6):
    """LayerNorm over the last axis, as torch.nn.LayerNorm(eps=1e-6): biased variance. [..., C] -> [..., C]"""
    mean = x.mean(axis=-1, keepdims=True)  # [..., 1]
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased (divide by C), as torch
    return (x - mean) / np.sqrt(var + x.dtype.type(eps)) * weight + bias


def linear(x, weight, bias):
    """torch.nn.Linear: weight is [out, in]. [..., in] -> [..., out]"""
    return x @ weight.T + bias


def mlp(x, fc1, fc2):
    """timm's Mlp: fc1 -> GELU -> fc2 (dropout is off at inference). [..., D] -> [..., D]"""
    return linear(gelu(linear(x, **fc1)), **fc2)  # [..., D] -> [..., hidden] -> [..., D]


def patchify(x, patch_size=16):
    """Cut images into P x P tiles, each laid out as the stem conv's kernel is. [B, 3, H, W] -> [B, N, 3*P*P]"""
    B, in_chans, height, width = x.shape
    P = patch_size
    G_h, G_w = height // P, width // P
    # each tile as (channel, row, column), the order of the conv weight[c]: [B, 3, G, P, G, P] -> [B, G, G, 3, P, P]
    tiles = x.reshape(B, in_chans, G_h, P, G_w, P).transpose(0, 2, 4, 1, 3, 5)
    return tiles.reshape(B, G_h * G_w, in_chans * P * P)  # tokens row by row, as the conv's output flattens


def stem(x, proj, patch_size=16):
    """Patch embedding: the PxP, stride-P conv `stem.proj` as patchify + one matmul. [B, 3, H, W] -> [B, N, C]"""
    weight, bias = proj["weight"], proj["bias"]  # [C, 3, P, P], [C]
    patches = patchify(x, patch_size)  # [B, N, 3*P*P]
    return linear(patches, weight.reshape(weight.shape[0], -1), bias)  # [B, N, 3*P*P] -> [B, N, C]


def token_mixing(x, norm1, mlp_tokens):
    """Mix across the N tokens, one channel at a time, with a residual. [B, N, C] -> [B, N, C]"""
    y = layer_norm(x, **norm1)  # [B, N, C]
    y = y.swapaxes(1, 2)  # [B, N, C] -> [B, C, N]: the MLP acts on the last axis, the tokens
    y = mlp(y, **mlp_tokens)  # [B, C, N] -> [B, C, T] -> [B, C, N]
    return x + y.swapaxes(1, 2)  # [B, C, N] -> [B, N, C]


def channel_mixing(x, norm2, mlp_channels):
    """Mix across the C channels, one token at a time, with a residual. [B, N, C] -> [B, N, C]"""
    return x + mlp(layer_norm(x, **norm2), **mlp_channels)  # [B, N, C] -> [B, N, H] -> [B, N, C]


def mixer_block(x, norm1, mlp_tokens, norm2, mlp_channels):
    """timm's MixerBlock: token mixing, then channel mixing. [B, N, C] -> [B, N, C]"""
    x = token_mixing(x, norm1, mlp_tokens)
    return channel_mixing(x, norm2, mlp_channels)


def global_pool(x):
    """Average over the tokens (timm's global_pool='avg'). [B, N, C] -> [B, C]"""
    return x.mean(axis=1)


def head(x, weight, bias):
    """The classifier: one linear layer. [B, C] -> [B, K]"""
    return linear(x, weight, bias)


def forward_features(x, stem_params, blocks, norm, patch_size=16):
    """Image to normalised tokens. [B, 3, H, W] -> [B, N, C]"""
    x = stem(x, patch_size=patch_size, **stem_params)  # [B, 3, H, W] -> [B, N, C]
    for block in blocks:
        x = mixer_block(x, **block)  # [B, N, C] -> [B, N, C]
    return layer_norm(x, **norm)  # the final norm


def forward(x, params, patch_size=16):
    """The whole model: [B, 3, H, W] -> [B, K] logits, or [B, C] pooled features when there is no head."""
    x = forward_features(x, params["stem"], params["blocks"], params["norm"], patch_size)  # [B, N, C]
    x = global_pool(x)  # [B, C]
    if "head" in params:
        x = head(x, **params["head"])  # [B, K]
    return x


def forward_intermediates(x, stem_params, blocks, norm, take, norm_intermediates=False, patch_size=16):
    """forward_features that also keeps the tokens after each block listed in take (block indices).

    norm_intermediates applies the final norm to each kept output, as timm's norm=True.
    [B, 3, H, W] -> (features [B, N, C], [[B, N, C] for each index in take, in block order])
    """
    x = stem(x, patch_size=patch_size, **stem_params)  # [B, 3, H, W] -> [B, N, C]
    intermediates = []
    for i, block in enumerate(blocks):
        x = mixer_block(x, **block)  # [B, N, C] -> [B, N, C]
        if i in take:
            intermediates.append(layer_norm(x, **norm) if norm_intermediates else x)
    return layer_norm(x, **norm), intermediates

"""Backward passes: one gradient function beside each forward of numpy_mixer.layers.

Every layer is a pair, as in karpathy/llm.c's train_gpt2.c:

    out, cache = <layer>_forward(x, **params)   # the forward of layers.py, plus what backward needs
    dx, grads = <layer>_backward(dout, cache)   # grads is a dict shaped like params (timm's keys)

The forward math is layers.py's own (called, never copied); these functions only keep the
intermediate values. `d<name>` is dloss/d<name> and has the shape of <name>.
Gradients are checked against torch autograd in float64 (tests/test_backward.py).

Dimension legend (as layers.py; sizes for the digits model in brackets):
    B  batch
    P  patch size               [6]
    N  tokens (patches)         [16]   (G * G, G = img_size / P)
    C  channels (hidden width)  [64]
    T  token-MLP width          [32]   (0.5 * C)
    H  channel-MLP width        [256]  (4 * C)
    K  classes                  [10]
    M  rows of a matmul, all leading axes flattened (B, or B*N, or B*C)

Everything stays in the dtype of the inputs (float32, or float64 for the gradient checks).
"""
import numpy as np

from . import layers


# --- linear: y = x @ W.T + b ---------------------------------------------------------------------

def linear_forward(x, weight, bias):
    """torch.nn.Linear. [..., in] -> [..., out]"""
    return layers.linear(x, weight, bias), (x, weight)


def linear_backward(dout, cache):
    """dout [..., out] -> dx [..., in], {"weight": [out, in], "bias": [out]}"""
    x, weight = cache
    dx = dout @ weight  # [..., out] @ [out, in] -> [..., in]
    dout_2d = dout.reshape(-1, dout.shape[-1])  # [M, out]
    x_2d = x.reshape(-1, x.shape[-1])  # [M, in]
    dweight = dout_2d.T @ x_2d  # [out, M] @ [M, in] -> [out, in]: summed over every row
    dbias = dout_2d.sum(axis=0)  # [out]
    return dx, {"weight": dweight, "bias": dbias}


# --- layer_norm: y = (x - mean) / sqrt(var + eps) * w + b, over the last axis --------------------

def layer_norm_forward(x, weight, bias, eps=1e-6):
    """torch.nn.LayerNorm(eps=1e-6). [..., C] -> [..., C]"""
    return layers.layer_norm(x, weight, bias, eps), (x, weight, eps)


def layer_norm_backward(dout, cache):
    """dout [..., C] -> dx [..., C], {"weight": [C], "bias": [C]}"""
    x, weight, eps = cache
    C = x.shape[-1]
    mean = x.mean(axis=-1, keepdims=True)  # [..., 1]
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # [..., 1], biased as in the forward
    rstd = 1 / np.sqrt(var + x.dtype.type(eps))  # [..., 1]
    xhat = (x - mean) * rstd  # [..., C], the normalised input
    dweight = (dout * xhat).reshape(-1, C).sum(axis=0)  # [C]
    dbias = dout.reshape(-1, C).sum(axis=0)  # [C]
    dxhat = dout * weight  # [..., C]
    # xhat depends on x through x itself, the mean and the variance; the three terms:
    #   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, {"weight": dweight, "bias": dbias}


# --- gelu: y = x * Phi(x) -----------------------------------------------------------------------

def gelu_forward(x):
    """Exact (erf) GELU. [...] -> [...]"""
    return layers.gelu(x), x


def gelu_backward(dout, cache):
    """dout [...] -> dx [...]: d/dx x*Phi(x) = Phi(x) + x*phi(x), phi the standard normal density."""
    x = cache
    one_half = x.dtype.type(0.5)
    Phi = one_half * (1 + layers.erf(x * x.dtype.type(np.sqrt(0.5))))  # normal CDF
    phi = np.exp(-one_half * x * x) * x.dtype.type(1 / np.sqrt(2 * np.pi))  # normal density
    return dout * (Phi + x * phi)


# --- mlp: fc1 -> GELU -> fc2 --------------------------------------------------------------------

def mlp_forward(x, fc1, fc2):
    """timm's Mlp, as layers.mlp. [..., D] -> [..., D]"""
    h, fc1_cache = linear_forward(x, **fc1)  # [..., D] -> [..., hidden]
    a, gelu_cache = gelu_forward(h)  # [..., hidden]
    out, fc2_cache = linear_forward(a, **fc2)  # [..., hidden] -> [..., D]
    return out, (fc1_cache, gelu_cache, fc2_cache)


def mlp_backward(dout, cache):
    """dout [..., D] -> dx [..., D], {"fc1": {...}, "fc2": {...}}"""
    fc1_cache, gelu_cache, fc2_cache = cache
    da, dfc2 = linear_backward(dout, fc2_cache)  # [..., D] -> [..., hidden]
    dh = gelu_backward(da, gelu_cache)  # [..., hidden]
    dx, dfc1 = linear_backward(dh, fc1_cache)  # [..., hidden] -> [..., D]
    return dx, {"fc1": dfc1, "fc2": dfc2}


# --- token mixing and channel mixing, each with its residual --------------------------------------

def token_mixing_forward(x, norm1, mlp_tokens):
    """As layers.token_mixing. [B, N, C] -> [B, N, C]"""
    y, norm_cache = layer_norm_forward(x, **norm1)  # [B, N, C]
    z, mlp_cache = mlp_forward(y.swapaxes(1, 2), **mlp_tokens)  # [B, C, N] -> [B, C, T] -> [B, C, N]
    return x + z.swapaxes(1, 2), (norm_cache, mlp_cache)


def token_mixing_backward(dout, cache):
    """dout [B, N, C] -> dx [B, N, C], {"norm1": {...}, "mlp_tokens": {...}}"""
    norm_cache, mlp_cache = cache
    dy_t, dmlp = mlp_backward(dout.swapaxes(1, 2), mlp_cache)  # [B, C, N]: back through the token MLP
    dx_norm, dnorm = layer_norm_backward(dy_t.swapaxes(1, 2), norm_cache)  # [B, N, C]
    return dout + dx_norm, {"norm1": dnorm, "mlp_tokens": dmlp}  # the residual passes dout straight on


def channel_mixing_forward(x, norm2, mlp_channels):
    """As layers.channel_mixing. [B, N, C] -> [B, N, C]"""
    y, norm_cache = layer_norm_forward(x, **norm2)  # [B, N, C]
    z, mlp_cache = mlp_forward(y, **mlp_channels)  # [B, N, C] -> [B, N, H] -> [B, N, C]
    return x + z, (norm_cache, mlp_cache)


def channel_mixing_backward(dout, cache):
    """dout [B, N, C] -> dx [B, N, C], {"norm2": {...}, "mlp_channels": {...}}"""
    norm_cache, mlp_cache = cache
    dy, dmlp = mlp_backward(dout, mlp_cache)  # [B, N, C]
    dx_norm, dnorm = layer_norm_backward(dy, norm_cache)  # [B, N, C]
    return dout + dx_norm, {"norm2": dnorm, "mlp_channels": dmlp}


def mixer_block_forward(x, norm1, mlp_tokens, norm2, mlp_channels):
    """As layers.mixer_block. [B, N, C] -> [B, N, C]"""
    x, token_cache = token_mixing_forward(x, norm1, mlp_tokens)
    x, channel_cache = channel_mixing_forward(x, norm2, mlp_channels)
    return x, (token_cache, channel_cache)


def mixer_block_backward(dout, cache):
    """dout [B, N, C] -> dx [B, N, C], grads with the keys of one timm block."""
    token_cache, channel_cache = cache
    dx, dchannel = channel_mixing_backward(dout, channel_cache)  # last in, first out
    dx, dtoken = token_mixing_backward(dx, token_cache)
    return dx, {**dtoken, **dchannel}


# --- stem: the P x P, stride-P conv as patches @ W.T ---------------------------------------------

def unpatch(dpatches, image_shape, patch_size):
    """The inverse layout of layers.patchify (tiles do not overlap, so nothing adds up). [B, N, 3*P*P] -> [B, 3, H, W]"""
    B, in_chans, height, width = image_shape
    P = patch_size
    G_h, G_w = height // P, width // P
    tiles = dpatches.reshape(B, G_h, G_w, in_chans, P, P).transpose(0, 3, 1, 4, 2, 5)  # [B, 3, G, P, G, P]
    return tiles.reshape(B, in_chans, height, width)


def stem_forward(x, proj, patch_size=16):
    """Patch embedding, as layers.stem. [B, 3, H, W] -> [B, N, C]"""
    return layers.stem(x, proj, patch_size), (x, proj["weight"], patch_size)


def stem_backward(dout, cache):
    """dout [B, N, C] -> dx [B, 3, H, W], {"proj": {"weight": [C, 3, P, P], "bias": [C]}}"""
    x, weight, patch_size = cache
    C = weight.shape[0]
    dpatches, dproj = linear_backward(dout, (layers.patchify(x, patch_size), weight.reshape(C, -1)))
    dproj["weight"] = dproj["weight"].reshape(weight.shape)  # [C, 3*P*P] -> [C, 3, P, P], the conv layout
    return unpatch(dpatches, x.shape, patch_size), {"proj": dproj}


# --- pooling, head, loss --------------------------------------------------------------------------

def global_pool_forward(x):
    """Average over the tokens. [B, N, C] -> [B, C]"""
    return layers.global_pool(x), x.shape


def global_pool_backward(dout, cache):
    """dout [B, C] -> dx [B, N, C]: each token gets 1/N of the gradient of the mean."""
    B, N, C = cache
    return np.repeat(dout[:, None, :] / N, N, axis=1)  # [B, C] -> [B, N, C]


def head_forward(x, weight, bias):
    """The classifier, as layers.head. [B, C] -> [B, K]"""
    return layers.head(x, weight, bias), (x, weight)


def head_backward(dout, cache):
    """dout [B, K] -> dx [B, C], {"weight": [K, C], "bias": [K]}"""
    return linear_backward(dout, cache)


def softmax_cross_entropy_forward(logits, labels):
    """Mean cross-entropy of integer labels, as torch.nn.functional.cross_entropy. [B, K], [B] -> scalar"""
    z = logits - logits.max(axis=-1, keepdims=True)  # [B, K], shifted so exp cannot overflow
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))  # [B, K], log softmax
    B = logits.shape[0]
    loss = -log_probs[np.arange(B), labels].mean()
    return loss, (log_probs, labels)


def softmax_cross_entropy_backward(cache):
    """-> dlogits [B, K] = (softmax - one_hot(labels)) / B, for dloss = 1."""
    log_probs, labels = cache
    B = log_probs.shape[0]
    dlogits = np.exp(log_probs)  # [B, K], the probabilities
    dlogits[np.arange(B), labels] -= 1
    return dlogits / B


# --- the whole model --------------------------------------------------------------------------------

def forward_with_cache(x, params, patch_size=16):
    """layers.forward, keeping every layer's cache. [B, 3, H, W] -> [B, K] logits ([B, C] with no head)"""
    x, stem_cache = stem_forward(x, params["stem"]["proj"], patch_size)  # [B, N, C]
    block_caches = []
    for block in params["blocks"]:
        x, cache = mixer_block_forward(x, **block)  # [B, N, C]
        block_caches.append(cache)
    x, norm_cache = layer_norm_forward(x, **params["norm"])  # [B, N, C]
    x, pool_cache = global_pool_forward(x)  # [B, C]
    head_cache = None
    if "head" in params:
        x, head_cache = head_forward(x, **params["head"])  # [B, K]
    return x, (stem_cache, block_caches, norm_cache, pool_cache, head_cache)


def backward(dout, cache):
    """dlogits [B, K] -> dimage [B, 3, H, W], grads nested exactly like params (timm's keys)."""
    stem_cache, block_caches, norm_cache, pool_cache, head_cache = cache
    grads = {}
    if head_cache is not None:
        dout, grads["head"] = head_backward(dout, head_cache)  # [B, K] -> [B, C]
    dx = global_pool_backward(dout, pool_cache)  # [B, C] -> [B, N, C]
    dx, grads["norm"] = layer_norm_backward(dx, norm_cache)
    grads["blocks"] = [None] * len(block_caches)
    for i in reversed(range(len(block_caches))):
        dx, grads["blocks"][i] = mixer_block_backward(dx, block_caches[i])  # [B, N, C]
    dx, grads["stem"] = stem_backward(dx, stem_cache)  # [B, N, C] -> [B, 3, H, W]
    return dx, grads


def loss_and_grads(params, x, labels, patch_size=16):
    """Cross-entropy of a batch and its gradient for every weight. -> (loss, logits [B, K], grads)"""
    logits, cache = forward_with_cache(x, params, patch_size)
    loss, loss_cache = softmax_cross_entropy_forward(logits, labels)
    _, grads = backward(softmax_cross_entropy_backward(loss_cache), cache)
    return loss, logits, grads

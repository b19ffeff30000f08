"""The fast path: MLP-Mixer inference for batches, built on BLAS matmuls, float32.

Same weights (the nested params of numpy_mixer.model, PyTorch layout, memory-mapped, never copied),
same answers as the readable layers in numpy_mixer.layers (tests/test_fast.py holds the two together).
What makes it fast (benchmarks/bench.py measures the result):

- no transposed copies: token mixing is `fc1.weight @ y[b]`, [T, N] @ [N, C] -> [T, C], on the
  [B, N, C] layout as it is; channel mixing is `y @ fc1.weight.T` with the transpose a free BLAS flag.
- both cores for everything: W worker threads (W = the BLAS thread count, so OMP_NUM_THREADS /
  OPENBLAS_NUM_THREADS apply) each take a share of the rows (channel mixing) or the columns (token
  mixing) and run single-threaded BLAS on it, so the elementwise NumPy work between the matmuls
  (GELU, LayerNorm, biases) is split over the cores as well; NumPy releases the GIL in both.
- fc1 -> bias -> GELU -> fc2 -> residual fused per tile of R rows, in reused buffers, in place (out=).
- LayerNorm in few passes, the row sums as matrix-vector products.
- GELU from a float32 erf with the same accuracy as layers.erf (< 1e-7) in fewer passes; see gelu_.

Dimension legend as in numpy_mixer.layers: B batch, N tokens, C channels, T token-MLP width,
H channel-MLP width, K classes, P patch size, R rows in a tile.
"""
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_F32 = np.float32
ROW_TILE = 128  # R: rows of [B*N, C] per channel-mixing tile; [R, H] float32 hidden = 1.5 MB for b16

try:  # threadpoolctl lets the workers run single-threaded BLAS side by side
    from threadpoolctl import ThreadpoolController
except ImportError:  # without it: one worker, BLAS threads its own matmuls
    ThreadpoolController = None

_controller = None
_pool = None
_pool_lock = threading.Lock()


# --- erf and GELU ---------------------------------------------------------------------------------

def erf(x):
    """The error function in float32, |error| < 1e-7 like layers.erf, in few in-place passes. [...] -> [...]"""
    x = np.asarray(x)
    if x.dtype != _F32:
        raise TypeError(f"fast.erf takes float32, got {x.dtype}")
    a = np.abs(x).ravel()
    with np.errstate(over="ignore", under="ignore"):
        out = _erf_abs(a, _Scratch()).reshape(x.shape)
    return np.copysign(out, x, out=out)


# erf in two forms, as layers.erf, each keeping its large term exact so float32 rounding stays small:
#   |u| < 1:   erf(u) = u + u * p(u^2)              p: layers.erf's own 8 coefficients
#   |u| >= 1:  erf(u) = 1 - exp(-u^2) * r(w),  w = 1 / (1 + u/2)
# r approximates erfcx(u) = exp(u^2) erfc(u) on [1, 4] in the variable w, where 5 coefficients do
# what 13 do in layers.erf (weighted minimax fit of the erf error, float32 coefficients: made by
# tools/fit_fast_erf.py). Max |error| of the whole erf < 1e-7 (tests/test_fast.py).
_SMALL = [np.float32(c) for c in (0.12837917, -0.37612638, 0.11283784, -0.026865559, 0.005221423,
                                  -0.0008490202, 0.00011313172, -9.80944e-06)]
_LARGE = [np.float32(c) for c in (-0.013506474904716015, 0.3924614191055298, -0.06145204231142998,
                                  0.7236605286598206, -0.03876246139407158)]


def gelu_(h, scratch):
    """Exact GELU in place on a contiguous float32 array, as torch.nn.GELU(). [...] -> [...]"""
    x = h.reshape(-1)  # a view: writing x writes h
    u = scratch.get("u", x.shape)
    np.abs(x, out=u)
    u *= _F32(np.sqrt(0.5))  # |u| = |x| / sqrt(2)
    with np.errstate(over="ignore", under="ignore"):  # t^2 may overflow to inf: exp(-inf) = 0, as wanted
        erf_u = _erf_abs(u, scratch)  # erf(|u|), in a scratch buffer
    # x Phi(x) = x/2 (1 + erf(x / sqrt2)) = (x + |x| erf(|x| / sqrt2)) / 2   (erf is odd)
    #          = (x + sqrt2 |u| erf(|u|)) / 2
    erf_u *= u
    erf_u *= _F32(np.sqrt(2))
    x += erf_u
    x *= _F32(0.5)
    return h


def _erf_abs(a, scratch):
    """erf(a) for a >= 0 (contiguous float32, 1-D); the result is a scratch buffer. [n] -> [n]"""
    n = a.shape
    ones = scratch.ones(n)  # min/max against an array: NumPy 2.4 runs them 4x faster than against a scalar
    # small form on s = min(a, 1); its value past 1 is dropped by the mask below
    s = scratch.get("s", n)
    np.minimum(a, ones, out=s)
    v = scratch.get("v", n)
    np.multiply(s, s, out=v)  # s^2
    small = _horner_(_SMALL, v, scratch.get("small", n))
    small *= s
    small += s  # s + s p(s^2)
    # large form on t = max(a, 1); no upper clip needed: past 4, exp(-t^2) underflows the product to 0
    t = scratch.get("t", n)
    np.maximum(a, ones, out=t)
    w = scratch.get("w", n)
    np.multiply(t, _F32(0.5), out=w)
    w += _F32(1)
    np.divide(_F32(1), w, out=w)  # w = 1 / (1 + t/2), in (0, 2/3]
    large = _horner_(_LARGE, w, scratch.get("large", n))  # r(w) ~ erfcx(t)
    np.multiply(t, t, out=t)
    np.negative(t, out=t)
    np.exp(t, out=t)  # exp(-t^2)
    large *= t
    np.subtract(_F32(1), large, out=large)  # 1 - exp(-t^2) r(w)
    # pick one form per element. At a = 1 both forms give erf(1) = 0.8427008 to the bit (checked
    # once per process), so for a < 1 `large` is that constant and for a >= 1 `small` is: then
    # small + (large - erf(1)) is exactly small, or exactly large (the subtraction is exact too).
    # This costs 2 passes instead of 5 for masks, and np.copyto(..., where=mask) costs 20x more.
    erf1 = _erf_at_one()
    if erf1 is not None:
        large -= erf1
        large += small
    else:  # the two forms differ in the last bit at 1 here (another exp): multiply by 0/1 masks
        mask = scratch.get_bool("mask", n)
        np.less(a, ones, out=mask)
        small *= mask
        np.greater_equal(a, ones, out=mask)
        large *= mask
        large += small
    return large


_ERF1 = []


def _erf_at_one():
    """erf(1) when the small and large forms agree on it to the bit on this machine, else None."""
    if not _ERF1:
        ones = np.ones(256, _F32)  # through the same vectorised loops as the real calls
        v = ones * ones
        small = _horner_(_SMALL, v, np.empty(256, _F32)) * ones + ones
        w = np.divide(_F32(1), ones * _F32(0.5) + _F32(1))
        large = _F32(1) - _horner_(_LARGE, w, np.empty(256, _F32)) * np.exp(-(ones * ones))
        agree = np.all(small == small[0]) and np.all(large == small[0])
        _ERF1.append(small[0] if agree else None)
    return _ERF1[0]


def _horner_(coefs, v, out):
    """out = coefs[0] + coefs[1] v + coefs[2] v^2 + ..., in place, float32. [n] -> [n]"""
    np.multiply(v, coefs[-1], out=out)
    out += coefs[-2]
    for c in coefs[-3::-1]:
        out *= v
        out += c
    return out


_local = threading.local()


def _scratch():
    """This thread's work buffers, kept between calls (a few MB per worker thread)."""
    if not hasattr(_local, "scratch"):
        _local.scratch = _Scratch()
    return _local.scratch


class _Scratch:
    """Reusable float32 work buffers of one worker, by name."""

    def __init__(self):
        self.buffers = {}

    def get(self, name, shape):
        size = int(np.prod(shape))
        buf = self.buffers.get(name)
        if buf is None or buf.size < size:
            buf = self.buffers[name] = np.empty(size, _F32)
        return buf[:size].reshape(shape)

    def ones(self, shape):
        """A float32 array of ones of this shape (kept filled)."""
        size = int(np.prod(shape))
        buf = self.buffers.get("ones")
        if buf is None or buf.size < size:
            buf = self.buffers["ones"] = np.ones(size, _F32)
        return buf[:size].reshape(shape)

    def get_bool(self, name, shape):
        size = int(np.prod(shape))
        buf = self.buffers.get(name)
        if buf is None or buf.size < size:
            buf = self.buffers[name] = np.empty(size, np.bool_)
        return buf[:size].reshape(shape)


# --- layers on tiles --------------------------------------------------------------------------------

def layer_norm_rows(x, weight, bias, out, scratch, eps=1e-6):
    """LayerNorm of each row, as layers.layer_norm (biased variance, eps 1e-6). [R, C] -> out [R, C]"""
    R, C = x.shape
    mean_w = scratch.get("mean_w", (C,))
    mean_w.fill(_F32(1 / C))
    mean = x @ mean_w  # [R]: row sums as one matrix-vector product
    np.subtract(x, mean[:, None], out=out)  # [R, C] centred
    sq = scratch.get("sq", (R, C))
    np.multiply(out, out, out=sq)
    var = sq @ mean_w  # [R], biased as torch
    var += _F32(eps)
    np.sqrt(var, out=var)
    np.divide(_F32(1), var, out=var)  # [R] 1 / std
    out *= var[:, None]
    out *= weight
    out += bias
    return out


def channel_mixing_tile(x, norm2, mlp_channels, scratch):
    """In place on a tile of rows: x += fc2(GELU(fc1(LayerNorm(x)))). [R, C] -> [R, C]"""
    R, C = x.shape
    fc1, fc2 = mlp_channels["fc1"], mlp_channels["fc2"]
    H = fc1["weight"].shape[0]
    y = layer_norm_rows(x, norm2["weight"], norm2["bias"], scratch.get("y", (R, C)), scratch)  # [R, C]
    h = scratch.get("h", (R, H))
    np.matmul(y, fc1["weight"].T, out=h)  # [R, C] @ [C, H] -> [R, H]; .T is a BLAS flag, not a copy
    h += fc1["bias"]
    gelu_(h, scratch)
    o = scratch.get("o", (R, C))
    np.matmul(h, fc2["weight"].T, out=o)  # [R, H] @ [H, C] -> [R, C]
    o += fc2["bias"]
    x += o


def token_mixing_columns(x, y, mlp_tokens, scratch):
    """In place on columns of one image: x += fc2(GELU(fc1 @ y)) with y = LayerNorm(x) given. [N, Cc] -> [N, Cc]"""
    fc1, fc2 = mlp_tokens["fc1"], mlp_tokens["fc2"]
    N, Cc = y.shape
    T = fc1["weight"].shape[0]
    h = scratch.get("ht", (T, Cc))
    np.matmul(fc1["weight"], y, out=h)  # [T, N] @ [N, Cc] -> [T, Cc]: mixes tokens, no transpose
    h += fc1["bias"][:, None]
    gelu_(h, scratch)
    o = scratch.get("ot", (N, Cc))
    np.matmul(fc2["weight"], h, out=o)  # [N, T] @ [T, Cc] -> [N, Cc]
    o += fc2["bias"][:, None]
    x += o


# --- the whole model ----------------------------------------------------------------------------------

def _plain(params):
    """The params tree with np.memmap leaves as plain ndarray views (no copy: same memory)."""
    if isinstance(params, dict):
        return {k: _plain(v) for k, v in params.items()}
    if isinstance(params, list):
        return [_plain(v) for v in params]
    return np.asarray(params)


def _split(n, parts):
    """parts contiguous (start, stop) ranges covering range(n), sizes differing by at most one."""
    bounds = [n * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _blas():
    """threadpoolctl's handle on the BLAS libraries loaded, or None without threadpoolctl."""
    global _controller
    if ThreadpoolController is None:
        return None
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.select(user_api="blas")


def num_workers():
    """Worker threads: the BLAS thread count (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS apply)."""
    blas = _blas()
    if blas is None:
        return 1  # BLAS threads the matmuls itself
    threads = max([lib.num_threads for lib in blas.lib_controllers] or [1])
    return max(1, min(threads, os.cpu_count() or 1))


def forward_features(x, params, patch_size=16, workers=None):
    """Image to normalised tokens, as layers.forward_features. [B, 3, H, W] -> [B, N, C] float32"""
    if x.dtype != _F32:
        raise TypeError(f"the fast path runs float32, got {x.dtype}")
    p = _plain(params)
    W = workers or num_workers()
    B, in_chans, height, width = x.shape
    P = patch_size
    G_h, G_w = height // P, width // P
    N = G_h * G_w
    weight = p["stem"]["proj"]["weight"]  # [C, 3, P, P]
    C = weight.shape[0]
    # the stem conv as one matmul: [B, 3, G, P, G, P] -> [B, G, G, 3, P, P] -> [B*N, 3*P*P] (a copy of the input)
    patches = x.reshape(B, in_chans, G_h, P, G_w, P).transpose(0, 2, 4, 1, 3, 5).reshape(B * N, -1)
    stem_w = weight.reshape(C, -1)  # [C, 3*P*P], a view
    blocks = p["blocks"]
    tokens = np.empty((B, N, C), _F32)  # the residual stream
    normed = np.empty((B, N, C), _F32)  # LayerNorm of it: norm1 of the next block, or the final norm
    rows, cols = tokens.reshape(B * N, C), normed.reshape(B * N, C)

    def next_norm(i):
        return blocks[i]["norm1"] if i < len(blocks) else p["norm"]

    def work(worker, barrier):
        scratch = _scratch()
        my_rows = [(r, min(r + ROW_TILE, r1)) for r0, r1 in [_split(B * N, W)[worker]]
                   for r in range(r0, r1, ROW_TILE)]
        c0, c1 = _split(C, W)[worker]
        for r0, r1 in my_rows:  # stem, then norm1 of block 0
            np.matmul(patches[r0:r1], stem_w.T, out=rows[r0:r1])  # [R, 3*P*P] @ [3*P*P, C] -> [R, C]
            rows[r0:r1] += p["stem"]["proj"]["bias"]
            n = next_norm(0)
            layer_norm_rows(rows[r0:r1], n["weight"], n["bias"], cols[r0:r1], scratch)
        for i, block in enumerate(blocks):
            barrier.wait()
            for b in range(B):  # token mixing on my columns of every image
                token_mixing_columns(tokens[b, :, c0:c1], normed[b, :, c0:c1], block["mlp_tokens"], scratch)
            barrier.wait()
            for r0, r1 in my_rows:  # channel mixing on my rows, then the next LayerNorm
                channel_mixing_tile(rows[r0:r1], block["norm2"], block["mlp_channels"], scratch)
                n = next_norm(i + 1)
                layer_norm_rows(rows[r0:r1], n["weight"], n["bias"], cols[r0:r1], scratch)

    _run(work, W)
    return normed


def forward(x, params, patch_size=16, workers=None):
    """The whole model, as layers.forward. [B, 3, H, W] -> [B, K] logits (or [B, C] pooled without a head)"""
    x = forward_features(x, params, patch_size, workers)  # [B, N, C]
    return forward_head(x, params)


def forward_head(x, params, pre_logits=False):
    """Average over tokens, then the head. [B, N, C] -> [B, K] (or [B, C])"""
    pooled = x.mean(axis=1)  # [B, C]
    if pre_logits or "head" not in params:
        return pooled
    head = params["head"]
    return pooled @ np.asarray(head["weight"]).T + head["bias"]  # [B, C] @ [C, K] -> [B, K]


def _run(work, W):
    """work(worker, barrier) on W threads (this one included), BLAS single-threaded in each."""
    if W == 1:
        work(0, _NoBarrier())
        return
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < W - 1:
            _pool = ThreadPoolExecutor(max_workers=W - 1, thread_name_prefix="numpy-mixer")
    barrier = threading.Barrier(W)

    def guarded(worker):
        try:
            work(worker, barrier)
        except BaseException:
            barrier.abort()  # release the others instead of leaving them waiting
            raise

    blas = _blas()
    errors = []
    with blas.limit(limits=1) if blas is not None else contextlib.nullcontext():
        futures = [_pool.submit(guarded, w) for w in range(1, W)]
        try:
            guarded(0)
        except BaseException as e:
            errors.append(e)
        errors += [e for e in (f.exception() for f in futures) if e is not None]
    # the first real error, not the broken barrier it left the other workers with
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)] or errors
    if real:
        raise real[0]


class _NoBarrier:
    def wait(self):
        pass

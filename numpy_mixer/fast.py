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
- GELU in one branch-free form, as accurate as layers.gelu in half the passes; see gelu_.

Dimension legend as in numpy_mixer.layers: B batch, N tokens, C channels, T token-MLP width,
H channel-MLP width, K classes, P patch size, R rows in a tile.
"""
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import layers

_F32 = np.float32
ROW_TILE = 128  # R: rows of [B*N, C] per channel-mixing tile; [R, H] float32 hidden = 1.5 MB for b16

try:  # threadpoolctl lets the workers run single-threaded BLAS side by side
    from threadpoolctl import ThreadpoolController
except ImportError:  # without it: one worker, BLAS threads its own matmuls
    ThreadpoolController = None

_controller = None
_pool = None
_pool_lock = threading.Lock()
_run_lock = threading.Lock()


# --- GELU ------------------------------------------------------------------------------------------

# GELU in one branch-free form, with no erf: erf is odd, so x Phi(x) = relu(x) - |x| Phi(-|x|), and
#   Phi(-|x|) = exp(-x^2/2) * erfcx(|x| / sqrt2) / 2 ~ exp(-x^2/2) * r(w),   w = 1 / (1 + K |x|),
# where erfcx(u) = exp(u^2) erfc(u) is smooth on all of [0, inf) and nearly a polynomial in w.
# r: 9 float32 coefficients fitted by tools/fit_fast_gelu.py. The result is as accurate as
# layers.gelu (max abs error 2.4e-7 for |x| <= 10, float32 rounding of x itself; tests/test_fast.py)
# in 27 in-place passes, where layers.gelu's two-branch erf takes about twice as many.
_GELU_K = np.float32(0.35355338)  # 0.5 / sqrt2
_GELU_R = [np.float32(c) for c in (-0.00016948695702012628, 0.14415211975574493, 0.11696862429380417,
                                   0.22736284136772156, -0.1858024001121521, 0.4906223714351654,
                                   -0.434673547744751, 0.16597431898117065, -0.02443481795489788)]


def gelu_(h, scratch):
    """Exact GELU in place on a contiguous float32 array, as torch.nn.GELU(). [...] -> [...]"""
    x = h.reshape(-1)  # a view: writing x writes h
    n = x.shape
    a = scratch.get("a", n)
    np.abs(x, out=a)  # |x|
    e = scratch.get("e", n)
    with np.errstate(over="ignore", under="ignore"):  # huge |x|: x^2 = inf, exp(-inf) = 0, as wanted (x = inf gives NaN)
        np.multiply(a, a, out=e)
        e *= _F32(-0.5)
        np.exp(e, out=e)  # exp(-x^2 / 2)
    w = scratch.get("w", n)
    np.multiply(a, _GELU_K, out=w)
    w += _F32(1)
    np.divide(_F32(1), w, out=w)  # w = 1 / (1 + K |x|), in (0, 1]
    r = scratch.get("r", n)
    np.multiply(w, _GELU_R[-1], out=r)  # Horner, in place
    r += _GELU_R[-2]
    for c in _GELU_R[-3::-1]:
        r *= w
        r += c
    r *= e
    with np.errstate(invalid="ignore"):  # only x = +-inf: 0 * inf
        r *= a  # |x| Phi(-|x|)
    np.maximum(x, scratch.zeros(n), out=x)  # relu (against an array: 4x faster than against a scalar)
    x -= r
    return h


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

    def zeros(self, shape):
        """A float32 array of zeros of this shape (kept filled)."""
        size = int(np.prod(shape))
        buf = self.buffers.get("zeros")
        if buf is None or buf.size < size:
            buf = self.buffers["zeros"] = np.zeros(size, _F32)
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
    # the stem conv as one matmul, on the tiles of layers.patchify: [B, N, 3*P*P] -> [B*N, 3*P*P]
    patches = layers.patchify(x, P).reshape(B * N, -1)
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


def _run(work, W):
    """work(worker, barrier) on W threads (this one included), BLAS single-threaded in each.

    One call at a time (a lock): two interleaved calls would share the pool and the BLAS thread
    limit, and could wait on each other's barriers.
    """
    if W == 1:
        work(0, _NoBarrier())
        return
    with _run_lock:
        _run_workers(work, W)


def _run_workers(work, W):
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

"""The fast path: MLP-Mixer inference for batches, built on BLAS matmuls, float32.

Same weights (the nested params of numpy_mixer.model, PyTorch layout, memory-mapped, never copied),
same answers as the readable layers in numpy_mixer.layers (tests/test_fast.py holds the two together).
What makes it fast (benchmarks/bench.py measures the result; the profile is in the README):

- matmuls over many images at once, with no transposed copies: the residual stream is kept
  token-major, [N, B, C], so token mixing is `fc1.weight @ y`, [T, N] @ [N, B*C], and channel mixing
  `y @ fc1.weight.T`, [N*B, C] @ [C, H], the transpose a free BLAS flag; both in large tiles of columns
  or rows (TOKEN_COLS, CHANNEL_ROWS).
- both cores for everything: W worker threads (W = the BLAS thread count, so OMP_NUM_THREADS /
  OPENBLAS_NUM_THREADS apply) each run single-threaded BLAS, so the elementwise NumPy work between
  the matmuls (GELU, LayerNorm, biases) is spread over the cores too; NumPy releases the GIL in both.
- the channel MLP split by hidden units as well as rows: a task takes a slice of fc1's rows and fc2's
  columns for a chunk of CHANNEL_ROWS rows, so each weight is read once per chunk (once per block up
  to 4 images), however many workers there are.
- tasks handed out as workers ask for them, so a slow or busy core holds nobody up; the result is
  the same bits however they are shared out, and for any number of workers (with threadpoolctl, which
  keeps BLAS single-threaded in each; without it, one worker lets BLAS thread the matmuls).
- in place (out=) in reused buffers; GELU and LayerNorm in cache-sized pieces.
- LayerNorm in few passes, the row sums as matrix-vector products.
- GELU in one branch-free form, as accurate as layers.gelu in a third of the passes; see gelu_.

Dimension legend as in numpy_mixer.layers: B batch, N tokens, C channels, T token-MLP width,
H channel-MLP width, K classes, P patch size, R rows in a tile, Q columns in a tile, Hs hidden
units in a slice.
"""
import contextlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import layers

_F32 = np.float32
CHANNEL_ROWS = 784  # rows of [N*B, C] per channel-MLP matmul (all of them up to batch 4 at 196 tokens)
CHANNEL_UNITS = 768  # hidden units per channel-MLP task (4 slices of H = 3072 for b16)
TOKEN_COLS, TOKEN_COLS_MIN = 1536, 128  # columns of [N, B*C] per token-MLP task: B*C / TOKEN_TASKS within these
TOKEN_TASKS = 4
LN_ROWS = 128  # rows per LayerNorm step, to stay in cache
GELU_PIECE = 1 << 16  # elements per GELU step: its work buffers stay in cache

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
#   Phi(-|x|) = exp(-x^2/2) * erfcx(|x| / sqrt2) / 2 ~ exp(-x^2/2) * r(w),   w = 1 / (S + |x|),
# where erfcx(u) = exp(u^2) erfc(u) is smooth on all of [0, inf) and nearly a polynomial in w.
# r: 6 float32 coefficients fitted by tools/fit_fast_gelu.py. The error is that of layers.gelu: at most
# 2.5e-7 max(1, |x|), about the float32 rounding of x itself (relative: 3e-7, 2.5 float32 steps, near 0,
# where layers.gelu has 1e-7; tests/test_fast.py), in 20 in-place passes where layers.gelu takes ~60.
_GELU_S = np.float32(3.15)
_GELU_R = [np.float32(c) for c in (0.005951978266239166, 0.22606517374515533, 3.325342893600464,
                                   -9.32603931427002, 50.98733139038086, -41.044166564941406)]


def gelu_(h, scratch):
    """Exact GELU in place on a contiguous float32 array, as torch.nn.GELU(). [...] -> [...]

    In pieces of GELU_PIECE elements, so that the four work buffers stay in cache between passes.
    """
    flat = h.reshape(-1)  # a view: writing it writes h
    piece = min(flat.size, GELU_PIECE)
    buffers = [scratch.get(name, (piece,)) for name in ("a", "e", "w", "r")]
    zeros = scratch.zeros((piece,))
    # huge |x|: x^2 = inf, exp(-inf) = 0, as wanted; x = +-inf: 0 * inf = NaN, as torch's gelu(inf) is not
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for start in range(0, flat.size, piece):
            x = flat[start:start + piece]
            a, e, w, r = (b[:x.size] for b in buffers)
            _gelu_piece(x, a, e, w, r, zeros[:x.size])
    return h


def _gelu_piece(x, a, e, w, r, zeros):
    np.abs(x, out=a)  # |x|
    np.multiply(a, a, out=e)
    e *= _F32(-0.5)
    np.exp(e, out=e)  # exp(-x^2 / 2)
    np.add(a, _GELU_S, out=w)
    np.divide(_F32(1), w, out=w)  # w = 1 / (S + |x|), in (0, 1/S]
    np.multiply(w, _GELU_R[-1], out=r)  # Horner, in place
    r += _GELU_R[-2]
    for c in _GELU_R[-3::-1]:
        r *= w
        r += c
    r *= e
    r *= a  # |x| Phi(-|x|)
    np.maximum(x, zeros, out=x)  # relu (against an array: 4x faster than against a scalar)
    x -= r


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
        size = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.size < size:
            buf = self.buffers[name] = np.empty(size, _F32)
        return buf[:size].reshape(shape)

    def zeros(self, shape):
        """A float32 array of zeros of this shape (kept filled)."""
        size = math.prod(shape)
        buf = self.buffers.get("zeros")
        if buf is None or buf.size < size:
            buf = self.buffers["zeros"] = np.zeros(size, _F32)
        return buf[:size].reshape(shape)


# --- layers on slices of the residual stream ---------------------------------------------------------

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


def token_mixing_columns(x, y, mlp_tokens, scratch):
    """In place on columns of the [N, B*C] stream: x += fc2(GELU(fc1 @ y)), y = LayerNorm(x) given. [N, Q] -> [N, Q]

    Q columns, from any images and channels: token mixing treats every (image, channel) column alike,
    so one matmul covers columns of many images.
    """
    fc1, fc2 = mlp_tokens["fc1"], mlp_tokens["fc2"]
    N, Q = y.shape
    T = fc1["weight"].shape[0]
    h = scratch.get("ht", (T, Q))
    np.matmul(fc1["weight"], y, out=h)  # [T, N] @ [N, Q] -> [T, Q]: mixes tokens, no transpose
    h += fc1["bias"][:, None]
    gelu_(h, scratch)
    o = scratch.get("ot", (N, Q))
    np.matmul(fc2["weight"], h, out=o)  # [N, T] @ [T, Q] -> [N, Q]
    o += fc2["bias"][:, None]
    x += o


def channel_mixing_part(y, mlp_channels, units, out, scratch):
    """One share of the hidden units of the channel MLP, without fc2's bias: the shares sum to
    fc2(GELU(fc1(y))) - fc2.bias. [R, C] -> out [R, C]

    units = (h0, h1): hidden units h0:h1 of H, i.e. rows h0:h1 of fc1.weight and columns h0:h1 of
    fc2.weight (slices, not copies). Split this way, each task reads only its slice of the weights.
    """
    fc1, fc2 = mlp_channels["fc1"], mlp_channels["fc2"]
    h0, h1 = units
    h = scratch.get("h", (y.shape[0], h1 - h0))
    np.matmul(y, fc1["weight"][h0:h1].T, out=h)  # [R, C] @ [C, Hs] -> [R, Hs]; .T is a BLAS flag, not a copy
    h += fc1["bias"][h0:h1]
    gelu_(h, scratch)
    np.matmul(h, fc2["weight"][:, h0:h1].T, out=out)  # [R, Hs] @ [Hs, C] -> [R, C]: a share of the sum over H


# --- the whole model ----------------------------------------------------------------------------------

def _plain(params):
    """The params tree with np.memmap leaves as plain ndarray views (no copy: same memory)."""
    if isinstance(params, dict):
        return {k: _plain(v) for k, v in params.items()}
    if isinstance(params, list):
        return [_plain(v) for v in params]
    return np.asarray(params)


def _tiles(n, size):
    """(start, stop) ranges of at most size covering range(n)."""
    return [(i, min(i + size, n)) for i in range(0, n, size)]


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
    """Image to normalised tokens, as layers.forward_features. [B, 3, H, W] -> [B, N, C] float32

    The residual stream is kept token-major, [N, B, C] (rows n*B + b), so that token mixing is a
    [T, N] @ [N, B*C] matmul over the whole batch, and channel mixing an [N*B, C] @ [C, H] one. Every
    block runs in four phases, each split into tasks, separated by barriers:
      token mixing:    tiles of the B*C columns,
      norm2:           tiles of the rows,
      channel MLP:     (chunk of rows, slice of CHANNEL_UNITS hidden units): the slice's share
                       of the sum over H, into a [N*B, C] buffer of partial sums per slice,
      residual, next norm: tiles of the rows, adding up the partial sums in slice order.
    Tasks go to whichever worker asks first, so a worker on a busy or slower core takes fewer of
    them instead of keeping the others waiting at the barrier. The tasks do not depend on which
    worker runs them, nor on W: the result is the same, bit for bit, however they are shared out
    (BLAS single-threaded in each worker: with threadpoolctl).
    """
    if x.dtype != _F32:
        raise TypeError(f"the fast path runs float32, got {x.dtype}")
    p = _plain(params)
    B, _, height, width = x.shape
    P = patch_size
    N = (height // P) * (width // P)
    weight = p["stem"]["proj"]["weight"]  # [C, 3, P, P]
    C = weight.shape[0]
    blocks = p["blocks"]
    H = blocks[0]["mlp_channels"]["fc1"]["weight"].shape[0] if blocks else 0
    # the stem conv as one matmul, on the tiles of layers.patchify, token-major: [N*B, 3*P*P]
    patches = layers.patchify(x, P).transpose(1, 0, 2).reshape(N * B, -1)
    stem_w = weight.reshape(C, -1)  # [C, 3*P*P], a view
    tokens = np.empty((N, B, C), _F32)  # the residual stream, token-major
    normed = np.empty((N, B, C), _F32)  # LayerNorm of it: norm1, norm2 or the final norm
    rows, normed_rows = tokens.reshape(N * B, C), normed.reshape(N * B, C)  # [N*B, C] views
    cols, normed_cols = tokens.reshape(N, B * C), normed.reshape(N, B * C)  # [N, B*C] views
    # the tasks of each phase (their sizes depend on the shapes only)
    row_tiles = _tiles(N * B, LN_ROWS)
    col_tiles = _tiles(B * C, min(TOKEN_COLS, max(TOKEN_COLS_MIN, -(-B * C // TOKEN_TASKS))))
    units = _tiles(H, CHANNEL_UNITS)
    channel_tasks = [(rows_, u) for rows_ in _tiles(N * B, CHANNEL_ROWS) for u in range(len(units))]
    parts = np.empty((len(units), N * B, C), _F32)  # parts[u]: what hidden units units[u] add to each row
    # one queue of tasks per phase: next() on a list iterator is atomic, so each task is taken once
    queues = [iter(row_tiles)] + [iter(tasks) for _ in blocks
                                  for tasks in (col_tiles, row_tiles, channel_tasks, row_tiles)]

    def next_norm(i):
        return blocks[i]["norm1"] if i < len(blocks) else p["norm"]

    def work(barrier):
        scratch = _scratch()
        queue = iter(queues)
        n = next_norm(0)
        for r0, r1 in next(queue):  # stem, then norm1 of block 0
            np.matmul(patches[r0:r1], stem_w.T, out=rows[r0:r1])  # [R, 3*P*P] @ [3*P*P, C] -> [R, C]
            rows[r0:r1] += p["stem"]["proj"]["bias"]
            layer_norm_rows(rows[r0:r1], n["weight"], n["bias"], normed_rows[r0:r1], scratch)
        for i, block in enumerate(blocks):
            barrier.wait()
            for c0, c1 in next(queue):  # token mixing
                token_mixing_columns(cols[:, c0:c1], normed_cols[:, c0:c1], block["mlp_tokens"], scratch)
            barrier.wait()
            n = block["norm2"]
            for r0, r1 in next(queue):  # norm2
                layer_norm_rows(rows[r0:r1], n["weight"], n["bias"], normed_rows[r0:r1], scratch)
            barrier.wait()
            for (r0, r1), u in next(queue):  # the channel MLP, a slice of hidden units at a time
                channel_mixing_part(normed_rows[r0:r1], block["mlp_channels"], units[u], parts[u, r0:r1], scratch)
            barrier.wait()
            n = next_norm(i + 1)
            for r0, r1 in next(queue):  # the residual: add up the partial sums; then the next LayerNorm
                x_ = rows[r0:r1]
                x_ += block["mlp_channels"]["fc2"]["bias"]
                for part in parts[:, r0:r1]:
                    x_ += part
                layer_norm_rows(x_, n["weight"], n["bias"], normed_rows[r0:r1], scratch)

    with _run_lock:
        _run(work, workers or num_workers())  # read inside the lock: not the 1 of another call's BLAS limit
    return np.ascontiguousarray(normed.transpose(1, 0, 2))  # [N, B, C] -> [B, N, C]


def _run(work, W):
    """work(barrier) on W threads (this one included), BLAS single-threaded in each (with threadpoolctl).

    The caller holds _run_lock: two interleaved calls would share the pool and the BLAS thread limit,
    and could wait on each other's barriers.
    """
    blas = _blas()
    with blas.limit(limits=1) if blas is not None else contextlib.nullcontext():
        if W == 1:
            work(_NoBarrier())
        else:
            _run_workers(work, W)


def _run_workers(work, W):
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < W - 1:
            _pool = ThreadPoolExecutor(max_workers=W - 1, thread_name_prefix="numpy-mixer")
    barrier = threading.Barrier(W)

    def guarded():
        try:
            work(barrier)
        except BaseException:
            barrier.abort()  # release the others instead of leaving them waiting
            raise

    errors, futures = [], []
    try:
        for _ in range(W - 1):
            futures.append(_pool.submit(guarded))
        guarded()
    except BaseException as e:
        barrier.abort()  # a submit that failed (interpreter shutting down) leaves no one waiting either
        errors.append(e)
    errors += [e for e in (f.exception() for f in futures) if e is not None]
    # the first real error, not the broken barrier it left the other workers with
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)] or errors
    if real:
        raise real[0]


class _NoBarrier:
    def wait(self):
        pass

"""The fast path: MLP-Mixer inference for batches, built on BLAS matmuls, float32.

Same weights (the nested params of numpy_mixer.model, PyTorch layout, memory-mapped, never copied),
same answers as the readable layers in numpy_mixer.layers (tests/test_fast.py holds the two together).
What makes it fast (benchmarks/bench.py measures the result; the README has the tables, and
benchmarks/README.md every measurement):

- matmuls over many images at once, with no transposed copies: the residual stream is kept
  token-major, [N, B, C], so token mixing is `fc1.weight @ y`, [T, N] @ [N, B*C], and channel mixing
  `y @ fc1.weight.T`, [N*B, C] @ [C, H], the transpose a free BLAS flag.
- every core for everything: W workers (W = the BLAS thread count, so OMP_NUM_THREADS /
  OPENBLAS_NUM_THREADS apply) each run single-threaded BLAS, so the elementwise NumPy work between the
  matmuls (GELU, LayerNorm, biases) is spread over the cores too. On x86-64 the workers are this process
  and W-1 worker processes over shared memory (numpy_mixer.processes: threads would share one GIL, and
  on 16 cores that made the pass 2-5x slower); elsewhere, or with NUMPY_MIXER_WORKERS=threads, threads.
- work sized from W and B (see Plan): the matmul phases have TASKS_PER_WORKER tasks per worker or
  more at every batch size, batch 1 included (on worker processes, process_tasks_per_worker(W): one
  round of the largest tiles on 2 or 3 workers whose cores are alike, two from 4 workers on), in task
  counts that fill whole rounds of W. The
  channel MLP is two phases: fc1 (+ GELU) split by hidden units, fc2 split by output channels, with
  a barrier between: no partial sums to add up, so the bits do not depend on the split. Both are
  also split by rows, in tiles at most square (taller ones ran faster) of about TILE_ELEMS outputs at
  most, in bands of CHANNEL_ROWS rows; the tasks reading one weight slice are handed out one
  after another, so each weight is read from memory about once per band (once per block up to
  batch 4). From two tasks per worker on, the tiles of fc1, fc2 and (where it has two rounds of them) token
  mixing come in two widths (GUIDED_SHARES), the wide ones handed out first, so that a worker that falls
  behind ends the phase on a narrow one. LayerNorm
  phases get about one task per worker: each task costs 12 NumPy calls of Python.
- tasks handed out as the workers ask for them (a shared iterator for threads, a pipe for worker
  processes: processes.TaskQueue), so a worker that falls behind takes fewer; every value is
  computed by the same operations whichever task holds it (LayerNorm sums row by row, no matmul
  dimension of 1, no matmul tile small enough for OpenBLAS's small-matrix kernels), so the result
  is the same bits for any W and however the tasks are shared (with threadpoolctl, which keeps BLAS
  single-threaded in each; without it, one worker lets BLAS thread the matmuls).
- in place (out=) in reused buffers; GELU in cache-sized pieces, in one branch-free form, as
  accurate as layers.gelu in a third of the passes; see gelu_.

A block runs in five phases, with a barrier after each: token mixing (tiles of the B*C columns),
norm2 (tiles of rows), fc1 + GELU, fc2 + residual, and the next LayerNorm (norm1 of the next block,
or the final norm). plan() sizes them; time_tasks() times each task single-threaded, so that
benchmarks/bench.py --phases can predict the schedule for any W on a small machine.

Dimension legend as in numpy_mixer.layers: B batch, N tokens, C channels, T token-MLP width,
H channel-MLP width, K classes, P patch size, R rows in a tile, Q columns in a tile, Hs hidden
units in a slice, Cs output channels in a slice, W workers.
"""
import contextlib
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import layers, processes
from .errors import MixerError

_F32 = np.float32
TASKS_PER_WORKER = 2  # tasks per worker in the matmul phases on threads: slack for a busy core, few GIL rounds
# ... and on fewer than MANY_WORKERS worker processes where the cores are alike: one round of the largest tiles
# (on 2 cores, in turns, the task queue with 2 per worker ran 0.93-0.96x the fixed shares of one per worker it
# replaced at batch 1, 0.97-1.00x at batch 8; with one per worker, 0.97-0.99x and 1.01-1.02x) ...
PROCESS_TASKS_PER_WORKER = 1
# ... from MANY_WORKERS on, two: with many workers, some fall behind in every phase (on 16 cores, the busiest
# worker was 33-71% above the mean with one task each), and smaller tiles let the others take over. Measured in
# turns on a 16-core Xeon, b16, 2 per worker against 1: 0.99x / 1.12x / 1.00x at batch 1 / 8 / 32 on 16
# workers, 1.04x / 1.26x at batch 1 / 8 on 8, 0.97x / 1.05x on 4 (3 per worker on 16: 0.90x / 1.06x / 0.98x).
MANY_WORKERS = 4  # at 4, within the noise (0.97x / 1.05x); clear from 8 on
MANY_TASKS_PER_WORKER = 2
# ... and where the cores differ (processes.cores_differ: performance and efficiency cores), smaller tiles, so that
# the fast cores take more of them. On 2 cores, one of them shared with a busy loop (a core at half speed), the
# queue with 2 per worker ran 1.21x the fixed shares of one per worker at batch 1 and 1.27x at batch 8 (with one
# per worker, 0.98x and 1.27x).
UNEVEN_TASKS_PER_WORKER = 2
NORM_TASKS_PER_WORKER = 1  # LayerNorm tasks are short: one each (more only costs Python calls)
CHANNEL_ROWS = 784  # channel-MLP rows in bands of at most this many (each weight read once per band)
TILE_ELEMS = 1 << 20  # outputs per even matmul task at most (4 MB; wide tiles 4/3 of it); 2^16-2^18: 10-20% slower
NORM_ROWS = 128  # at most this many rows per LayerNorm task: its buffers stay in cache
NORM_MIN_ROWS = 16  # at least this many: a LayerNorm task is 12 NumPy calls, each ~0.8 us of Python
QUANTUM = 8  # columns, hidden units and channels are split in multiples of 8 (a SIMD width) ...
MIN_COLS = 16  # ... and at least 16 per task (thinner matmuls run far below the BLAS peak)
MIN_ROWS = 2  # never 1 row: NumPy/OpenBLAS would switch to a matrix-vector product, with other bits
# every matmul tile does more than this many multiply-adds: OpenBLAS (SkylakeX and others) runs
# matmuls of M*N*K <= 100^3 in "small matrix" kernels that round differently, so smaller tiles would
# make the bits depend on the split (and the split on W). 2^21 leaves a margin.
MIN_TILE_MACS = 1 << 21
HIDDEN_MAJOR_ROWS = 400  # up to this many rows (batch 1 and 2 of 196 tokens), the hidden activations are [H, N*B]
GELU_PIECE = 1 << 16  # elements per GELU step: its work buffers stay in cache
# With two tasks per worker or more, a matmul phase's tiles come in two sizes, the first half of them twice as
# wide as the second (GUIDED_SHARES, handed out largest first), so that a worker that falls behind ends the phase
# on a short tile. Measured in turns on a 16-core Xeon, b16 on 16 workers, against even tiles: 1.06x / 1.06x /
# 1.16x at batch 1 / 8 / 32 (3 rounds; 3:1 shares 1.05x / 1.04x / 1.11x), and in an earlier run of 2 rounds
# 0.99x / 0.94x / 1.13x. On 2 cores, threads or 2 tasks per worker process, within 1-2% either way.
GUIDED_SHARES = (2, 1)

try:  # threadpoolctl lets the workers run single-threaded BLAS side by side
    from threadpoolctl import ThreadpoolController
except ImportError:  # without it: one worker, BLAS threads its own matmuls
    ThreadpoolController = None

_controller = None
_pool = None
_pool_lock = threading.Lock()
_run_lock = threading.Lock()


def _forget_after_fork():
    """In a child made by fork(): the worker threads are gone (only the forking thread survives), and a
    lock another thread held stays held; start both afresh, or the child's first pass would wait forever."""
    global _pool, _pool_lock, _run_lock
    _pool, _pool_lock, _run_lock = None, threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


# --- GELU ------------------------------------------------------------------------------------------

# GELU in one branch-free form, with no erf: a logistic function of a polynomial,
#   GELU(x) = x Phi(x) = x / (1 + exp(x q(x^2))),   q ~ log(Phi(-x) / Phi(x)) / x = -2 artanh(erf(x / sqrt2)) / x,
# an even, smooth exponent (-1.596 at 0); q: 7 float32 coefficients (degree 6 in x^2) fitted on |x| <= 6 by
# tools/fit_fast_gelu.py. Past 6, exp(x q) is 0 or infinity: GELU(x) = x, or -0. The error is at most
# 1.6e-7 max(1, |x|) (layers.gelu's bound is 2.5e-7, about the float32 rounding of x itself) and near 0
# 1.7e-7 |x| (tests/test_fast.py), in 17 in-place passes where layers.gelu takes ~60 (and the form before,
# relu(x) - |x| exp(-x^2/2) r(1/(3.15 + |x|)), took 20 passes and five work buffers: this one is 25% faster).
_GELU_Q = [np.float32(c) for c in (-1.595768928527832, -0.07266782224178314, 6.590939301531762e-05,
                                   0.00011055591312469915, -7.946229743538424e-06, 2.672939274361852e-07,
                                   -3.6187310925583915e-09)]


def gelu_(h, scratch):
    """Exact GELU in place, as torch.nn.GELU(), on a contiguous float32 array or on a 2-D one whose
    rows are contiguous (a tile of a wider array). [...] -> [...]

    In pieces of about GELU_PIECE elements, so that the two work buffers stay in cache between passes.
    """
    if h.flags.c_contiguous:
        flat = h.reshape(-1)  # a view: writing it writes h
        step = min(flat.size, GELU_PIECE)
        pieces = [flat[i:i + step] for i in range(0, flat.size, step)]
    else:  # whole rows at a time
        step = max(1, GELU_PIECE // h.shape[1])
        pieces = [h[i:i + step] for i in range(0, h.shape[0], step)]
    size = pieces[0].size if pieces else 0
    buffers = [scratch.get(name, (size,)) for name in ("u", "r")]
    # large |x|: exp(x q) overflows to infinity (GELU -> -0) or underflows to 0 (GELU -> x), as wanted
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for x in pieces:
            u, r = (b[:x.size].reshape(x.shape) for b in buffers)
            _gelu_piece(x, u, r)
    return h


def _gelu_piece(x, u, r):
    np.multiply(x, x, out=u)  # x^2
    np.multiply(u, _GELU_Q[-1], out=r)  # Horner in x^2, in place
    r += _GELU_Q[-2]
    for c in _GELU_Q[-3::-1]:
        r *= u
        r += c
    r *= x  # x q(x^2), odd
    np.exp(r, out=r)
    r += _F32(1)
    np.divide(x, r, out=x)  # x / (1 + exp(x q))


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


# --- layers on tiles of the residual stream ------------------------------------------------------------

def layer_norm_rows(x, weight, bias, out, scratch, eps=1e-6):
    """LayerNorm of each row, as layers.layer_norm (biased variance, eps 1e-6). [R, C] -> out [R, C]

    The row sums are np.add.reduce along each row: the same bits for a row whatever tile holds it.
    """
    R, C = x.shape
    mean = scratch.get("mean", (R,))
    np.add.reduce(x, axis=1, out=mean)
    mean *= _F32(1 / C)  # [R]
    np.subtract(x, mean[:, None], out=out)  # [R, C] centred
    sq = scratch.get("sq", (R, C))
    np.multiply(out, out, out=sq)
    var = scratch.get("var", (R,))
    np.add.reduce(sq, axis=1, out=var)
    var *= _F32(1 / C)  # [R], biased as torch
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


def channel_fc1_tile(y, fc1, units, out, hidden_major=False):
    """GELU(fc1(y)) for hidden units h0:h1 of H: rows h0:h1 of fc1.weight (a slice, not a copy).
    [R, C] -> out [R, Hs], or out [Hs, R] if hidden_major

    out: the tile of the hidden activations, [N*B, H] or [H, N*B] (rows contiguous), written in place.
    """
    h0, h1 = units
    w, b = fc1["weight"][h0:h1], fc1["bias"][h0:h1]
    if hidden_major:
        np.matmul(w, y.T, out=out)  # [Hs, C] @ [C, R] -> [Hs, R]; .T is a BLAS flag, not a copy
        out += b[:, None]
    else:
        np.matmul(y, w.T, out=out)  # [R, C] @ [C, Hs] -> [R, Hs]
        out += b
    gelu_(out, _scratch())


def channel_fc2_tile(h, fc2, channels, x, scratch, hidden_major=False):
    """x += fc2(h) for output channels c0:c1: rows c0:c1 of fc2.weight, the whole sum over H.
    h [R, H], or [H, R] if hidden_major -> x [R, Cs]"""
    c0, c1 = channels
    w, b = fc2["weight"][c0:c1], fc2["bias"][c0:c1]
    if hidden_major:
        o = scratch.get("o", (c1 - c0, h.shape[1]))
        np.matmul(w, h, out=o)  # [Cs, H] @ [H, R] -> [Cs, R]
        o += b[:, None]
        x += o.T
    else:
        o = scratch.get("o", (h.shape[0], c1 - c0))
        np.matmul(h, w.T, out=o)  # [R, H] @ [H, Cs] -> [R, Cs]
        o += b
        x += o


# --- the plan: tasks per phase, from the shapes and the worker count ----------------------------------

def hidden_major(rows):
    """Whether the channel MLP's hidden activations are kept hidden-unit-major, [H, N*B], for a pass of
    `rows` = N*B rows: up to HIDDEN_MAJOR_ROWS. Few rows (196 at batch 1, not a multiple of OpenBLAS's
    16-row kernel) make the short side of the matmuls; with the rows as BLAS's columns, weight @ y.T ran
    5-10% faster than y @ weight.T (b16, batch 1, on 1 core), and at batch 8 and 32, 2% slower."""
    return rows <= HIDDEN_MAJOR_ROWS


def _split(n, parts, quantum=1, least=1):
    """(start, stop) ranges cutting range(n) into at most `parts` near-equal pieces, cut at multiples
    of quantum, none shorter than least (fewer pieces if need be; one piece if n < least)."""
    units = -(-n // quantum)
    for parts in range(max(1, min(parts, units)), 0, -1):
        cuts = [min(n, (i * units // parts) * quantum) for i in range(parts + 1)]
        tiles = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
        if min(b - a for a, b in tiles) >= least:
            return tiles
    return [(0, n)]


def _grid(rows, cols, inner, tasks, W, guided=()):
    """Tiles ((r0, r1), (c0, c1)) of a [rows, cols] = [rows, inner] @ [inner, cols] output, in hand-out order.

    Rows in bands of at most CHANNEL_ROWS; in each band, tiles no wider than square (taller ones ran
    faster, see below) of about TILE_ELEMS outputs at most, and enough of them for `tasks` over all bands,
    in a count that fills whole rounds of W workers where the bands allow; none below MIN_TILE_MACS.
    guided: () for columns cut evenly, or (big, small) shares: where there are two rounds of tiles or more, the
    first half of each band's column slices that much wider than the second (_guided; the wide tiles can then
    exceed TILE_ELEMS, by up to big / mean(big, small)).
    Hand-out order: the wide column slices of every band, then the narrow ones (all of them, where the cut
    is even); band by band, and in a band, column slice by column slice, so that the tasks reading one
    weight slice run side by side (each weight read about once per band).
    """
    bands = _split(rows, -(-rows // CHANNEL_ROWS))
    band = min(b - a for a, b in bands)
    want = max(-(-tasks * band // rows), -(-band * cols // TILE_ELEMS))  # tiles per band
    step = W // math.gcd(W, len(bands))  # tiles per band in multiples of this: len(bands) * want fills rounds of W
    want = -(-want // step) * step
    guided = guided if len(bands) * want >= 2 * W else ()  # two rounds of tiles or more
    square = math.sqrt(want * band / cols)  # r row splits x want/r column splits, rows/r ~ cols/(want/r)
    # a row split that divides `want`, so that the tiles fill whole rounds of workers (33 tasks on 16
    # workers take three rounds, 32 take two), at most square: taller tiles ran faster than square ones
    # (b16, batch 1, 32 tasks on 1 core: fc2 in 98 x 48 tiles 88 GFLOP/s, in 49 x 96 tiles 77; row-major.
    # Hidden-unit-major, session 8: fc2 in 98 x 96 and 196 x 48 tiles 110-114, in 49 x 192 tiles 100)
    fits = [r for r in range(1, min(want, band // MIN_ROWS) + 1) if want % r == 0] or [1]
    row_splits = max([r for r in fits if r <= square] or fits[:1])
    wide, narrow = [], []
    for b0, b1 in bands:
        row_tiles = [(b0 + a, b0 + b) for a, b in _split(b1 - b0, row_splits, 1, MIN_ROWS)]
        shortest = min(b - a for a, b in row_tiles)
        least_cols = max(MIN_COLS, -(-MIN_TILE_MACS // (shortest * inner)))
        parts = want // row_splits
        if guided:
            col_tiles, first = _guided(cols, parts, QUANTUM, least_cols, guided)
        else:
            col_tiles = _split(cols, parts, QUANTUM, least_cols)
            first = len(col_tiles)
        wide += [(r, c) for c in col_tiles[:first] for r in row_tiles]
        narrow += [(r, c) for c in col_tiles[first:] for r in row_tiles]
    return wide + narrow


def _guided(n, parts, quantum, least, shares):
    """((start, stop) ranges cutting range(n) into `parts` pieces, how many of them are wide): the first half
    longer than the second in the ratio of shares (big, small), cut at multiples of quantum, none shorter than
    least; or, where that cannot be done (an odd count, pieces too short, too few quanta for two widths),
    _split's even pieces, all counted as wide.

    Handed out in this order, the long tiles go first and the short ones last, so that the workers finish a
    phase closer together: one that falls behind ends on a short tile."""
    half = parts // 2
    if parts >= 2 and parts % 2 == 0:
        units = -(-n // quantum)
        big, small = shares
        weights = [big] * half + [small] * half
        total, cuts, at = sum(weights), [0], 0
        for w in weights:
            at += w
            cuts.append(min(n, (at * units // total) * quantum))
        tiles = [(a, b) for a, b in zip(cuts, cuts[1:])]
        widths = [b - a for a, b in tiles]
        if min(widths) >= max(least, 1) and min(widths[:half]) > max(widths[half:]):  # long enough, two widths
            return tiles, half
    even = _split(n, parts, quantum, least)
    return even, len(even)


def guided_shares(tasks_per_worker):
    """The (big, small) tile shares of a plan with tasks_per_worker tasks per worker: GUIDED_SHARES from two
    on (two rounds of tasks or more), else () (even tiles)."""
    return GUIDED_SHARES if tasks_per_worker >= 2 else ()


class Plan:
    """The tasks of every phase for a batch B of a model (N, C, T, H) on W workers.

    stem:  row tiles (the patch matmul, its bias, then norm1 of block 0),
    token: column tiles of [N, B*C],
    norm:  row tiles of [N*B, C] (norm2, and norm1 of the next block or the final norm),
    fc1:   ((r0, r1), (h0, h1)) tiles of the hidden [N*B, H] (or [H, N*B]: hidden_major),
    fc2:   ((r0, r1), (c0, c1)) tiles of the output [N*B, C];
    guided: the (big, small) shares of the column slices of token, fc1 and fc2 where a phase has two rounds of
    tiles or more (wide ones first), or () for even cuts (see plan()).
    """

    def __init__(self, B, N, C, T, H, W, patch_inputs, tasks_per_worker=TASKS_PER_WORKER, hidden_unit_major=None,
                 guided=None):
        rows = N * B
        self.shape, self.workers = dict(B=B, N=N, C=C, T=T, H=H), W
        whole_rounds = lambda n: -(-n // W) * W  # noqa: E731 (n tasks rounded up to fill whole rounds of W)
        self.norm = _split(rows, whole_rounds(max(-(-rows // NORM_ROWS), NORM_TASKS_PER_WORKER * W)), 1,
                           NORM_MIN_ROWS)
        self.stem = _split(rows, len(self.norm), 1, max(MIN_ROWS, -(-MIN_TILE_MACS // (C * patch_inputs))))
        cols = B * C
        token_splits = whole_rounds(max(-(-cols * T // TILE_ELEMS), tasks_per_worker * W))
        least = max(MIN_COLS, -(-MIN_TILE_MACS // (N * T)))
        self.token = _split(cols, token_splits, QUANTUM, least)
        if len(self.token) > W and len(self.token) % W:  # the least tile cut the count short of whole rounds:
            # fewer, wider tiles in whole rounds (b16, batch 1, W = 16: one round of 16 tiles of 48 columns, not
            # 24 of 32 in two rounds, the second half empty: on 1 core a 32-column task took 0.131 ms and a
            # 48-column one 0.176, so the phase should take 0.176 ms where it took 0.262; not measured alone on
            # 16 cores, and the phase model cannot tell: its 1-core times make a phase's first task, the one
            # that brings the weights into cache, the slowest)
            self.token = _split(cols, len(self.token) // W * W, QUANTUM, least)
        guided = tuple(guided_shares(tasks_per_worker) if guided is None else guided)
        if guided and len(self.token) >= 2 * W:
            self.token, _ = _guided(cols, len(self.token), QUANTUM, least, guided)
        self.fc1 = _grid(rows, H, C, tasks_per_worker * W, W, guided)
        self.fc2 = _grid(rows, C, H, tasks_per_worker * W, W, guided)
        self.guided = guided
        self.hidden_major = hidden_major(rows) if hidden_unit_major is None else hidden_unit_major

    def phases(self, depth):
        """(phase name, tasks) in the order they run, barriers between them."""
        out = [("stem+norm", self.stem)]
        for _ in range(depth):
            out += [("token", self.token), ("norm", self.norm), ("fc1", self.fc1), ("fc2", self.fc2),
                    ("norm", self.norm)]
        return out

    def counts(self):
        """Tasks per phase: {name: count}."""
        return {"token": len(self.token), "norm": len(self.norm), "fc1": len(self.fc1), "fc2": len(self.fc2)}


def plan(B, N, C, T, H, W, patch_inputs=768, tasks_per_worker=TASKS_PER_WORKER, hidden_unit_major=None, guided=None):
    """The Plan for batch B of a model with N tokens, C channels, T and H hidden widths, on W workers
    (patch_inputs: 3 P^2 values per patch, the stem's inner dimension), with at least tasks_per_worker
    tasks per worker in the matmul phases (TASKS_PER_WORKER for threads, process_tasks_per_worker(W) for
    worker processes), the hidden activations hidden-unit-major if hidden_unit_major (None: as
    hidden_major(N * B) says), and the matmul phases' column slices in two widths, wide ones first, in the
    ratio guided = (big, small) (None: as guided_shares(tasks_per_worker) says; (): cut evenly)."""
    return Plan(B, N, C, T, H, W, patch_inputs, tasks_per_worker, hidden_unit_major, guided)


# --- the whole model ----------------------------------------------------------------------------------

def _plain(params):
    """The params tree with np.memmap leaves as plain ndarray views (no copy: same memory)."""
    if isinstance(params, dict):
        return {k: _plain(v) for k, v in params.items()}
    if isinstance(params, list):
        return [_plain(v) for v in params]
    return np.asarray(params)


def _blas():
    """threadpoolctl's handle on the BLAS libraries loaded, or None without threadpoolctl."""
    global _controller
    if ThreadpoolController is None:
        return None
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.select(user_api="blas")


def blas_threads(n):
    """A with-block in which this process's BLAS runs on n threads (a no-op without threadpoolctl)."""
    blas = _blas()
    return blas.limit(limits=n) if blas is not None else contextlib.nullcontext()


@contextlib.contextmanager
def one_blas_thread():
    """A with-block for the small matmuls around a forward pass (the head): BLAS on one thread, while
    holding the lock forward_features holds.

    On more threads, a BLAS call wakes the BLAS library's own threads, which then spin for a while
    (OpenBLAS: about 0.1 s) before they sleep, taking the cores from the worker processes of the next
    pass. Measured on 2 cores, model(x) back to back at batch 1: Mixer-S/16 110 ms a call with the
    head's matmul on 2 threads, 47 ms on one; Mixer-B/16 5.3 img/s against 7.4. The lock: a limit puts
    back the count it found when it ends, so a head's limit interleaved with a forward pass's in another
    thread could put back the pass's 1 for good.
    """
    with _run_lock, blas_threads(1):
        yield


def num_workers():
    """Worker threads: the BLAS thread count (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS apply)."""
    blas = _blas()
    if blas is None:
        return 1  # BLAS threads the matmuls itself
    threads = max([lib.num_threads for lib in blas.lib_controllers] or [1])
    return max(1, min(threads, os.cpu_count() or 1))


def model_shape(params, patch_size, image_size):
    """(N, C, T, H) of a params tree for square images of image_size pixels."""
    blocks = params["blocks"]
    C = params["stem"]["proj"]["weight"].shape[0]
    N = (image_size // patch_size) ** 2
    T = blocks[0]["mlp_tokens"]["fc1"]["weight"].shape[0] if blocks else 0
    H = blocks[0]["mlp_channels"]["fc1"]["weight"].shape[0] if blocks else 0
    return N, C, T, H


def forward_features(x, params, patch_size=16, workers=None):
    """Image to normalised tokens, as layers.forward_features. [B, 3, H, W] -> [B, N, C] float32

    The residual stream is kept token-major, [N, B, C] (rows n*B + b), so that token mixing is a
    [T, N] @ [N, B*C] matmul over the whole batch, and channel mixing an [N*B, C] @ [C, H] one. The
    phases and their tasks are those of plan(B, N, C, T, H, W); tasks go to whichever worker asks
    first. Every value is computed by the same operations whatever tile and worker it falls in: the
    result is the same, bit for bit, for any W (BLAS single-threaded in each worker: threadpoolctl).
    """
    return _forward_features(x, params, patch_size, workers)


def profile(x, params, patch_size=16, workers=None):
    """forward_features, timed phase by phase in every worker (wall time: what the pass took, waits
    included; benchmarks/bench.py --profile prints it).

    Returns (tokens [B, N, C], {"wall": seconds of the whole call, "workers": one list per worker of
    (phase name, seconds in its tasks, seconds at the barrier before the phase), phase by phase; on worker
    processes this process's list first, then the helpers' by rank}).
    """
    times = []
    start = time.perf_counter()
    tokens = _forward_features(x, params, patch_size, workers, times)
    return tokens, {"wall": time.perf_counter() - start, "workers": times}


def _forward_features(x, params, patch_size, workers, times=None):
    if len(x) == 0:  # no images: no rows for the plan to cut (MlpMixer returns this too)
        job = shapes(x, params, patch_size)
        return np.zeros((0, job["N"], job["C"]), _F32)
    with _run_lock:
        W = workers or num_workers()  # read inside the lock: not the 1 of another call's BLAS limit
        if W > 1 and _blas() is not None and processes.supported():
            return _forward_processes(x, params, patch_size, W, times)
        return _forward(x, params, shapes(x, params, patch_size), W, W, None, times)


TASKS_ENV = "NUMPY_MIXER_TASKS_PER_WORKER"  # set by hand: where cores_differ cannot tell (a VM on a hybrid host)
MAX_TASKS_PER_WORKER = 16


def process_tasks_per_worker(W):
    """Tasks per worker in the matmul phases on W worker processes: NUMPY_MIXER_TASKS_PER_WORKER if set (1
    to 16), else UNEVEN_TASKS_PER_WORKER where this process's cores differ in speed (processes.cores_differ,
    read once), else MANY_TASKS_PER_WORKER from MANY_WORKERS workers on, else PROCESS_TASKS_PER_WORKER."""
    global _uneven
    chosen = os.environ.get(TASKS_ENV, "").strip()
    if chosen:
        if not chosen.isdecimal() or not 1 <= int(chosen) <= MAX_TASKS_PER_WORKER:
            raise MixerError(f"{TASKS_ENV}={os.environ[TASKS_ENV]!r} is not a whole number from 1 to "
                             f"{MAX_TASKS_PER_WORKER}: set one (2 where the cores differ in speed) or unset it "
                             "to let numpy-mixer choose")
        return int(chosen)
    if _uneven is None:
        _uneven = processes.cores_differ()
    if _uneven:
        return UNEVEN_TASKS_PER_WORKER
    return MANY_TASKS_PER_WORKER if W >= MANY_WORKERS else PROCESS_TASKS_PER_WORKER


_uneven = None


def _forward_processes(x, params, patch_size, W, times=None):
    """forward_features on worker processes (numpy_mixer.processes): this one and W-1 helpers, over shared
    memory, each taking the tiles of a phase from the task queue as it asks for them."""
    job = shapes(x, params, patch_size, process_tasks_per_worker(W))
    mine = None
    if times is not None:
        job["profile"], mine = True, []  # the helpers send their phase times back
    try:
        pool = processes.pool(W)
        pool.use_weights(params)
        buffer = pool.use_activations(buffer_size(layout_of(job)))
        a, steps = _prepare(x, params, job, W, buffer)
        job["plan"] = plan_key(steps)  # each helper plans the pass itself, and checks it got the same tiles
        scratch = _scratch()

        def take(i, tiles):  # this process's tasks, from the queue the helpers read
            return processes.take(pool.queue.read_fd, tiles)

        with blas_threads(1):  # this process is worker 0: single-threaded BLAS, as the others
            helpers = pool.run(job, lambda barrier: run_phases(steps, barrier, take, scratch, mine),
                               [len(tiles) for _, tiles, _ in steps])
        if times is not None:
            times += [mine] + [[tuple(t) for t in h] for h in helpers]
    except BaseException:
        processes.discard()  # whatever went wrong, the next call starts from fresh workers
        raise
    return np.array(a["normed"].transpose(1, 0, 2), order="C")  # [N, B, C] -> [B, N, C], out of shared memory


def time_tasks(x, params, patch_size=16, plan_workers=1, tasks_per_worker=TASKS_PER_WORKER):
    """One forward pass on one worker with the plan for plan_workers (and tasks_per_worker), timing
    every task (thread CPU time).

    Returns (tokens [B, N, C], [(phase name, [seconds of each task, in hand-out order]), ...]).
    """
    with _run_lock:
        record = []
        job = shapes(x, params, patch_size, tasks_per_worker)
        return _forward(x, params, job, 1, plan_workers, record), record


def _layout(B, N, C, H, patch_inputs, hidden_unit_major):
    """(name, shape) of the forward pass's arrays, in the order they sit in one buffer (the hidden activations
    [H, N*B] if hidden_unit_major, else [N*B, H])."""
    hidden = (H, N * B) if hidden_unit_major else (N * B, H)
    return [("patches", (N * B, patch_inputs)),  # the stem's input, token-major: [N*B, 3*P*P]
            ("tokens", (N, B, C)),  # the residual stream, token-major
            ("normed", (N, B, C)),  # LayerNorm of it: norm1, norm2 or the final norm
            ("hidden", hidden)]  # GELU(fc1(norm2(x))) of the channel MLP


ALIGN = 16  # each array of a shared buffer starts on a 64-byte boundary (16 float32)


def buffer_size(layout):
    """float32 values a buffer holding the layout's arrays needs (each one aligned)."""
    return sum(-(-math.prod(shape) // ALIGN) * ALIGN for _, shape in layout)


def arrays(layout, buffer=None):
    """{name: float32 array} of the layout: views of `buffer` (flat float32, buffer_size long), or new."""
    if buffer is None:
        return {name: np.empty(shape, _F32) for name, shape in layout}
    out, at = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        out[name] = buffer[at:at + size].reshape(shape)
        at += -(-size // ALIGN) * ALIGN
    return out


def phases(p, a, tasks, P):
    """[(phase name, tiles, fn(tile, scratch))] of one forward pass, in order, barriers between them.

    p: the params tree (plain arrays); a: the arrays of _layout (a["patches"] filled in); tasks: the
    Plan; P: the patch size. Any worker may run any tile: each writes only its own part of the arrays.
    """
    blocks = p["blocks"]
    N, B, C = a["tokens"].shape
    patches, hidden = a["patches"], a["hidden"]
    stem_w = p["stem"]["proj"]["weight"].reshape(C, -1)  # [C, 3*P*P], a view
    rows, normed_rows = a["tokens"].reshape(N * B, C), a["normed"].reshape(N * B, C)  # [N*B, C] views
    cols, normed_cols = a["tokens"].reshape(N, B * C), a["normed"].reshape(N, B * C)  # [N, B*C] views

    def next_norm(i):
        return blocks[i]["norm1"] if i < len(blocks) else p["norm"]

    def stem(n):
        def task(tile, scratch):
            r0, r1 = tile
            np.matmul(patches[r0:r1], stem_w.T, out=rows[r0:r1])  # [R, 3*P*P] @ [3*P*P, C] -> [R, C]
            rows[r0:r1] += p["stem"]["proj"]["bias"]
            layer_norm_rows(rows[r0:r1], n["weight"], n["bias"], normed_rows[r0:r1], scratch)
        return task

    def token(block):
        def task(tile, scratch):
            c0, c1 = tile
            token_mixing_columns(cols[:, c0:c1], normed_cols[:, c0:c1], block["mlp_tokens"], scratch)
        return task

    def norm(n):
        def task(tile, scratch):
            r0, r1 = tile
            layer_norm_rows(rows[r0:r1], n["weight"], n["bias"], normed_rows[r0:r1], scratch)
        return task

    def fc1(block):
        def task(tile, scratch):
            (r0, r1), (h0, h1) = tile
            out = hidden[h0:h1, r0:r1] if tasks.hidden_major else hidden[r0:r1, h0:h1]
            channel_fc1_tile(normed_rows[r0:r1], block["mlp_channels"]["fc1"], (h0, h1), out, tasks.hidden_major)
        return task

    def fc2(block):
        def task(tile, scratch):
            (r0, r1), (c0, c1) = tile
            h = hidden[:, r0:r1] if tasks.hidden_major else hidden[r0:r1]
            channel_fc2_tile(h, block["mlp_channels"]["fc2"], (c0, c1), rows[r0:r1, c0:c1], scratch, tasks.hidden_major)
        return task

    run_fns = [stem(next_norm(0))]
    for i, block in enumerate(blocks):
        run_fns += [token(block), norm(block["norm2"]), fc1(block), fc2(block), norm(next_norm(i + 1))]
    return [(name, tiles, fn) for (name, tiles), fn in zip(tasks.phases(len(blocks)), run_fns)]


def run_phases(steps, barrier, share, scratch, times=None):
    """Run this worker's share of every phase, waiting at the barrier between phases.

    share(i, tiles): an iterable of the tiles of phase i this worker runs (a queue shared by the
    threads, or the task queue of worker processes). times: None, or a list that gets (phase name,
    seconds in this worker's tasks, seconds it waited at the barrier before them) for every phase.
    """
    for i, (name, tiles, fn) in enumerate(steps):
        arrived = time.perf_counter()
        if i:
            barrier.wait()
        start = time.perf_counter()
        for tile in share(i, tiles):
            fn(tile, scratch)
        if times is not None:
            times.append((name, time.perf_counter() - start, start - arrived))


def shapes(x, params, patch_size, tasks_per_worker=TASKS_PER_WORKER):
    """{B, N, C, T, H, P, patch_inputs, per_worker, hidden_major, guided} of one forward pass (what worker
    processes are sent): per_worker, the plan's tasks per worker; hidden_major, the hidden activations' layout,
    and guided, the tiles' shares (decided here, once, for every worker)."""
    if x.dtype != _F32:
        raise TypeError(f"the fast path runs float32, got {x.dtype}")
    B, channels, height, width = x.shape
    P = patch_size
    _, C, T, H = model_shape(params, P, P)
    N = (height // P) * (width // P)
    return dict(B=B, N=N, C=C, T=T, H=H, P=P, patch_inputs=channels * P * P, per_worker=tasks_per_worker,
                hidden_major=hidden_major(N * B), guided=guided_shares(tasks_per_worker))


def layout_of(job):
    """_layout of a pass of these shapes."""
    return _layout(job["B"], job["N"], job["C"], job["H"], job["patch_inputs"], job["hidden_major"])


def steps_of(p, job, W, buffer=None):
    """(arrays, phase steps) of one pass of shapes `job` on W workers, the arrays in buffer (or new)."""
    layout = layout_of(job)
    a = arrays(layout, None if buffer is None else buffer[:buffer_size(layout)])
    tasks = plan(*(job[k] for k in ("B", "N", "C", "T", "H")), W, job["patch_inputs"], job["per_worker"],
                 job["hidden_major"], job["guided"])
    return a, phases(p, a, tasks, job["P"])


def plan_key(steps):
    """A number that names the tiles of every phase of a pass (the same in every process: ints hash alike
    everywhere), so that worker processes can check they run the pass the calling process planned."""
    return hash(tuple(tuple(tiles) for _, tiles, _ in steps))


def _prepare(x, params, job, plan_workers, buffer=None):
    """(arrays with the patches filled in, phase steps) of one forward pass of shapes job."""
    a, steps = steps_of(_plain(params), job, plan_workers, buffer)
    # the stem conv as one matmul, on the tiles of layers.patchify, token-major: [N*B, 3*P*P]
    a["patches"].reshape(job["N"], job["B"], -1)[...] = layers.patchify(x, job["P"]).transpose(1, 0, 2)
    return a, steps


def _forward(x, params, job, W, plan_workers, record, times=None):
    a, steps = _prepare(x, params, job, plan_workers)
    if record is not None:  # one worker, each task timed
        scratch = _scratch()
        for name, tiles, fn in steps:
            seconds = []
            for tile in tiles:
                start = time.thread_time()  # CPU time of this thread: what the task costs, not what
                fn(tile, scratch)  # other processes on a busy machine took from it meanwhile
                seconds.append(time.thread_time() - start)
            record.append((name, seconds))
    else:
        # one queue of tasks per phase: next() on a list iterator is atomic, so each task is taken once
        queues = [iter(tiles) for _, tiles, _ in steps]

        def work(barrier):
            mine = None
            if times is not None:
                mine = []
                times.append(mine)  # list.append is atomic: one list per worker thread
            run_phases(steps, barrier, lambda i, _: queues[i], _scratch(), mine)

        _run(work, W)
    return np.ascontiguousarray(a["normed"].transpose(1, 0, 2))  # [N, B, C] -> [B, N, C]


def _run(work, W):
    """work(barrier) on W threads (this one included), BLAS single-threaded in each (with threadpoolctl).

    The caller holds _run_lock: two interleaved calls would share the pool and the BLAS thread limit,
    and could wait on each other's barriers.
    """
    with blas_threads(1):
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


def numpy_calls(phase, tile, shape):
    """NumPy calls one task of a phase makes (counted from the functions above, for the phase model's
    estimate of the Python time, which holds the GIL). tile: one of the Plan's tiles; shape: Plan.shape."""
    def gelu(n):
        return 17 * -(-n // GELU_PIECE)  # _gelu_piece's ufunc calls, per piece

    if phase == "norm":
        return 12  # layer_norm_rows
    if phase == "stem+norm":
        return 2 + 12
    if phase == "token":
        c0, c1 = tile
        return 5 + gelu(shape["T"] * (c1 - c0))
    if phase == "fc1":
        (r0, r1), (h0, h1) = tile
        return 3 + gelu((r1 - r0) * (h1 - h0))
    if phase == "fc2":
        return 3
    raise ValueError(f"unknown phase {phase!r}")


# --- the phase model: a greedy schedule of measured task times ----------------------------------------

def greedy_makespan(seconds, W):
    """Finish time of tasks handed out in order, each to the worker free first (list scheduling)."""
    free = [0.0] * W
    for s in seconds:
        i = free.index(min(free))
        free[i] += s
    return max(free)

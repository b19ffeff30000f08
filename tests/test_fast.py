"""The fast path (numpy_mixer.fast) against the readable layers, torch's GELU, and the batching around it.

Every Mixer architecture, odd and single batches, four head sizes; float32 checked at every
NumPy operation; the erf bound; predict / CLI batching; and one tiny run of the benchmark.
"""
import collections
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from numpy_mixer import fast, layers, predict, processes
from numpy_mixer.checkpoint import config_for, random_state_dict, save_checkpoint
from numpy_mixer.errors import MixerError
from numpy_mixer.model import MlpMixer, load_model
from numpy_mixer.weights import ARCHITECTURES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (architecture, batch size, classes): each architecture once, batch 1 and odd batches, heads of
# 1000, 21843 (in21k), 11221 (miil in21k) and 0 (pooled features) classes
CASES = [("mixer_s32_224", 3, 1000), ("mixer_s16_224", 1, 21843), ("mixer_b32_224", 2, 11221),
         ("mixer_b16_224", 1, 1000), ("mixer_b16_224", 5, 1000), ("mixer_l32_224", 2, 0),
         ("mixer_l16_224", 1, 1000)]


def rel_err(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def test_cases_cover_every_architecture():
    assert {arch for arch, _, _ in CASES} == set(ARCHITECTURES)


@pytest.mark.parametrize("arch,batch,classes", CASES, ids=[f"{a}-B{b}-K{k}" for a, b, k in CASES])
def test_fast_matches_readable(arch, batch, classes):
    model = MlpMixer(random_state_dict(config_for(arch, num_classes=classes), seed=batch), source=arch)
    x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    fast_out = model(x)  # the default is the fast path
    readable = model(x, fast=False)
    assert fast_out.dtype == readable.dtype == np.float32
    assert fast_out.shape == (batch, classes or model.num_features)
    assert readable.std() > 0.1  # real spread: not a zero head matching anything
    assert rel_err(fast_out, readable) < 1e-5, f"{arch}: fast vs readable logits"
    if batch > 1:  # different images give different answers (no mix-up across the batch)
        assert np.abs(fast_out[0] - fast_out[1]).max() > 1e-3


# tasks per worker of every plan fast.py makes: threads', and worker processes' where the cores are alike or not
PLANS_PER_WORKER = sorted({fast.TASKS_PER_WORKER, fast.PROCESS_TASKS_PER_WORKER, fast.MANY_TASKS_PER_WORKER,
                           fast.UNEVEN_TASKS_PER_WORKER})
WORKER_COUNTS = (1, 2, 3, 8, 16)  # 8 and 16 oversubscribe a 2-core machine: fine, the bits must not move


@pytest.mark.parametrize("mode", ["threads", "processes"])
@pytest.mark.parametrize("arch,batch", [("mixer_s16_224", 1), ("mixer_s32_224", 3), ("mixer_b16_224", 2),
                                        ("mixer_s32_224", 9)])  # 441 rows: hidden activations row-major
def test_the_same_bits_for_any_worker_count(arch, batch, mode, monkeypatch):
    """Run on W threads or worker processes for W in WORKER_COUNTS, and every plan up to W = 64 run on
    one thread: one result."""
    monkeypatch.setenv("NUMPY_MIXER_WORKERS", mode)
    model = MlpMixer(random_state_dict(config_for(arch, depth=2), seed=1))
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    P = model.config.patch_size
    readable = model.forward_features(x, fast=False)
    reference = fast.forward_features(x, model.params, P, workers=1)
    assert reference.dtype == np.float32 and reference.shape == readable.shape
    assert rel_err(reference, readable) < 1e-5
    N, C, T, H = fast.model_shape(model.params, P, 224)
    plans = set()
    for workers in WORKER_COUNTS:
        tokens = fast.forward_features(x, model.params, P, workers=workers)
        np.testing.assert_array_equal(tokens, reference, err_msg=f"{workers} workers")
    for workers in (2, 3, 5, 8, 16, 24, 32, 64):
        for per_worker in PLANS_PER_WORKER:  # threads' plans, processes' (cores alike or not)
            tokens, _ = fast.time_tasks(x, model.params, P, workers, per_worker)
            np.testing.assert_array_equal(tokens, reference, err_msg=f"the plan for {workers} workers")
            plans.add(tuple(fast.plan(batch, N, C, T, H, workers, 3 * P * P, per_worker).counts().items()))
    assert len(plans) >= 3  # the plans really differ with W: the test compares different splits
    with threadpool_limits(1, user_api="blas"):  # the default worker count follows the BLAS thread count
        np.testing.assert_array_equal(fast.forward_features(x, model.params, P), reference)


@pytest.mark.parametrize("batch", [1, 3])
def test_hidden_activations_either_way_round(batch, monkeypatch):
    """The channel MLP with its hidden activations row-major [N*B, H] and hidden-unit-major [H, N*B]:
    the same bits (and the rule picks hidden-unit-major for few rows only)."""
    model = MlpMixer(random_state_dict(config_for("mixer_b16_224", depth=2), seed=3))
    x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    assert fast.hidden_major(196) and not fast.hidden_major(196 * 8)
    results = {}
    for limit in (0, 10**9):  # every pass row-major; every pass hidden-unit-major
        monkeypatch.setattr(fast, "HIDDEN_MAJOR_ROWS", limit)
        assert fast.hidden_major(196 * batch) == bool(limit)
        results[limit], _ = fast.time_tasks(x, model.params, 16, 4)  # in this process: the patched rule holds
    readable = model.forward_features(x, fast=False)
    assert readable.std() > 0.1
    assert rel_err(results[0], readable) < 1e-5 and rel_err(results[10**9], readable) < 1e-5
    np.testing.assert_array_equal(results[0], results[10**9])  # each value the same dot product, in the same order


def test_the_same_bits_with_tiles_of_any_shares(monkeypatch):
    """Even tiles, and wide-then-narrow ones in any ratio: the same bits (no sums across tiles)."""
    model = MlpMixer(random_state_dict(config_for("mixer_s16_224", depth=2), seed=4))
    x = np.random.default_rng(4).standard_normal((8, 3, 224, 224), dtype=np.float32)
    c = model.config
    results, cuts = [], set()
    for shares in ((), (2, 1), (3, 1), (5, 2)):
        monkeypatch.setattr(fast, "GUIDED_SHARES", shares)
        results.append(fast.time_tasks(x, model.params, 16, 8, 2)[0])  # in this process: the patched shares hold
        plan = fast.plan(len(x), c.num_patches, c.embed_dim, c.tokens_dim, c.channels_dim, 8, 768, 2)
        cuts.add((tuple(plan.token), tuple(plan.fc1), tuple(plan.fc2)))
        assert not plan.hidden_major  # 1568 rows: the row-major layout (the other is in the test below)
    assert len({token for token, _, _ in cuts}) == len({fc1 for _, fc1, _ in cuts}) == 4  # four cuts of each
    assert results[0].std() > 0.1
    for tokens in results[1:]:
        np.testing.assert_array_equal(tokens, results[0])


def test_worker_processes_cut_the_tiles_as_the_caller_says(monkeypatch):
    """The shares travel with each pass: worker processes started before the caller's GUIDED_SHARES changed
    plan the caller's tiles (each checks the plan's key, and would stop the pass in one line otherwise)."""
    monkeypatch.setenv("NUMPY_MIXER_WORKERS", "processes")
    monkeypatch.setenv("NUMPY_MIXER_TASKS_PER_WORKER", "2")
    model = MlpMixer(random_state_dict(config_for("mixer_s32_224", depth=2), seed=5))
    x = np.random.default_rng(5).standard_normal((3, 3, 224, 224), dtype=np.float32)
    reference = fast.forward_features(x, model.params, 32, workers=1)
    fast.forward_features(x, model.params, 32, workers=2)  # the helpers start with the module's shares
    for shares in ((3, 1), ()):
        monkeypatch.setattr(fast, "GUIDED_SHARES", shares)
        np.testing.assert_array_equal(fast.forward_features(x, model.params, 32, workers=2), reference)


def test_the_head_runs_on_one_blas_thread(monkeypatch):
    """The head's small matmul must not wake this process's BLAS threads: they would spin after it and take
    the cores from the worker processes of the next call (2x slower back to back on 2 cores)."""
    from threadpoolctl import threadpool_info

    model = MlpMixer(random_state_dict(config_for("mixer_s32_224", depth=1), seed=1))
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    threads_seen, head = [], layers.head

    def recording_head(*args, **kwargs):
        threads_seen.append(max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"))
        # under forward_features' lock: a limit interleaved with a pass's in another thread would leave
        # the pass's 1 in place for good
        assert fast._run_lock.locked()
        return head(*args, **kwargs)

    monkeypatch.setattr(layers, "head", recording_head)
    with threadpool_limits(2, user_api="blas"):
        logits = model(x)
        assert max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas") == 2  # restored after
    assert threads_seen == [1] and logits.shape == (2, model.config.num_classes)


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_profile_times_every_phase_of_every_worker(mode, monkeypatch):
    """fast.profile: the same tokens as forward_features, and each worker's time in every phase, in order."""
    monkeypatch.setenv("NUMPY_MIXER_WORKERS", mode)
    model = MlpMixer(random_state_dict(config_for("mixer_s32_224", depth=2), seed=1))
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    tokens, run = fast.profile(x, model.params, 32, workers=3)
    np.testing.assert_array_equal(tokens, fast.forward_features(x, model.params, 32, workers=1))
    c = model.config
    names = [name for name, _ in fast.plan(2, c.num_patches, c.embed_dim, c.tokens_dim, c.channels_dim, 3).phases(2)]
    assert len(run["workers"]) == 3
    for worker in run["workers"]:
        assert [name for name, _, _ in worker] == names and worker[0][2] < 1e-3  # no barrier before the first
        assert all(work >= 0 and wait >= 0 for _, work, wait in worker)
        assert run["wall"] >= sum(work + wait for _, work, wait in worker) > 0
    assert max(sum(work for _, work, _ in w) for w in run["workers"]) > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_an_empty_batch_gives_empty_tokens(workers):
    model = MlpMixer(random_state_dict(config_for("mixer_s32_224", depth=1), seed=1))
    empty = np.zeros((0, 3, 224, 224), np.float32)
    tokens = fast.forward_features(empty, model.params, 32, workers=workers)
    assert tokens.shape == (0, 49, 512) and tokens.dtype == np.float32
    assert fast.profile(empty, model.params, 32, workers=workers)[0].shape == (0, 49, 512)


def test_the_same_bits_however_the_tasks_are_shared(monkeypatch):
    """A worker thread slowed down takes fewer tasks (threads take tasks as they come) and the result
    does not move."""
    monkeypatch.setenv("NUMPY_MIXER_WORKERS", "threads")
    model = MlpMixer(random_state_dict(config_for("mixer_s16_224", depth=2), seed=1))
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    reference = fast.forward_features(x, model.params, 16, workers=1)
    taken = collections.Counter()
    fc1 = fast.channel_fc1_tile

    def slowed(*args):  # every fc1 task the main thread takes starts late
        main = threading.current_thread() is threading.main_thread()
        taken[main] += 1
        if main:
            time.sleep(0.05)
        return fc1(*args)

    monkeypatch.setattr(fast, "channel_fc1_tile", slowed)
    tokens = fast.forward_features(x, model.params, 16, workers=2)
    np.testing.assert_array_equal(tokens, reference)
    # the slow main thread took fewer tasks than the helper: no fixed split, which would give it half
    assert 0 < taken[True] < taken[False], taken


def covers(tiles, shape):
    """Each element of an array of this shape lies in exactly one tile."""
    hits = np.zeros(shape, np.int64)
    for tile in tiles:
        hits[tuple(slice(a, b) for a, b in (tile if isinstance(tile[0], tuple) else (tile,)))] += 1
    return np.all(hits == 1)


@pytest.mark.parametrize("arch", ["mixer_s32_224", "mixer_b16_224", "mixer_l16_224"])
def test_the_plan_grows_with_the_workers_and_keeps_its_bounds(arch):
    c = config_for(arch)
    N, C, T, H = c.num_patches, c.embed_dim, c.tokens_dim, c.channels_dim
    for B, W, per_worker in itertools.product((1, 2, 8, 32), (1, 2, 4, 8, 16), PLANS_PER_WORKER):
        rows = N * B
        plan = fast.plan(B, N, C, T, H, W, 3 * c.patch_size ** 2, per_worker)
        assert covers(plan.norm, (rows,)) and covers(plan.stem, (rows,)) and covers(plan.token, (B * C,))
        assert covers(plan.fc1, (rows, H)) and covers(plan.fc2, (rows, C))
        # every matmul tile above OpenBLAS's small-matrix kernels (whose bits differ), or the whole matmul
        for (r0, r1), (c0, c1) in plan.fc1:
            assert (r1 - r0) * (c1 - c0) * C >= fast.MIN_TILE_MACS or (r1 - r0, c1 - c0) == (rows, H)
        for (r0, r1), (c0, c1) in plan.fc2:
            assert (r1 - r0) * (c1 - c0) * H >= fast.MIN_TILE_MACS or (r1 - r0, c1 - c0) == (rows, C)
        for c0, c1 in plan.token:
            assert (c1 - c0) * N * T >= fast.MIN_TILE_MACS or (c1 - c0) == B * C
        assert min(b - a for a, b in plan.norm) >= fast.MIN_ROWS
        # the parallel work grows with W: the channel MLP (88% of the FLOPs) has per_worker tasks per
        # worker, in whole rounds of W (no round with idle workers)
        if arch == "mixer_b16_224":
            assert len(plan.fc1) >= per_worker * W and len(plan.fc2) >= per_worker * W
            assert len(plan.fc1) % W == 0 and len(plan.fc2) % W == 0, (B, W, per_worker)
            assert len(plan.token) >= min(W, 16 * B)  # at B=1, MIN_TILE_MACS allows 24, so one round of 16
        # the token phase too comes in whole rounds, once it has more tiles than workers
        assert len(plan.token) <= W or len(plan.token) % W == 0, (B, W, per_worker, len(plan.token))
        # bounded weight traffic: in each band of rows, the tasks on one weight slice are handed out
        # together, so each slice is read about once per band, whatever W
        bands = fast._split(rows, -(-rows // fast.CHANNEL_ROWS))
        for tiles in (plan.fc1, plan.fc2):
            keys = [(next(i for i, (a, b) in enumerate(bands) if a <= r0 < b), cols) for (r0, _), cols in tiles]
            runs = sum(1 for i, k in enumerate(keys) if i == 0 or k != keys[i - 1])
            assert runs == len(set(keys)), (B, W)  # one run per (band, weight slice)


@pytest.mark.parametrize("arch", ["mixer_s32_224", "mixer_b16_224"])
def test_a_plan_of_two_rounds_or_more_hands_out_its_wide_tiles_first(arch):
    """From two tasks per worker on, a matmul phase's column slices come in two widths, GUIDED_SHARES apart,
    the wide ones handed out first; with one task per worker, the cut is even."""
    c = config_for(arch)
    N, C, T, H = c.num_patches, c.embed_dim, c.tokens_dim, c.channels_dim
    big, small = fast.GUIDED_SHARES
    assert big > small > 0
    guided_phases = collections.Counter()
    for B, W, per_worker in itertools.product((1, 2, 8, 32), (2, 4, 8, 16), PLANS_PER_WORKER):
        plan = fast.plan(B, N, C, T, H, W, 3 * c.patch_size ** 2, per_worker)
        assert plan.guided == (fast.GUIDED_SHARES if per_worker >= 2 else ())
        for name, widths in (("fc1", [c1 - c0 for _, (c0, c1) in plan.fc1]),
                             ("fc2", [c1 - c0 for _, (c0, c1) in plan.fc2]),
                             ("token", [c1 - c0 for c0, c1 in plan.token])):
            if max(widths) - min(widths) <= fast.QUANTUM:  # an even cut
                continue
            assert plan.guided, (B, W, per_worker, name)  # only a guided plan cuts unevenly
            middle = (max(widths) + min(widths)) / 2
            wide = [w > middle for w in widths]
            assert wide == sorted(wide, reverse=True), (B, W, name)  # every wide tile before every narrow one
            ratio = np.mean([w for w in widths if w > middle]) / np.mean([w for w in widths if w <= middle])
            assert abs(ratio - big / small) <= 2 * fast.QUANTUM / min(widths) + 0.05, (B, W, name, ratio)
            guided_phases[name] += 1
    # the rule really applies, to every matmul phase: the test checks many guided phases of each
    assert min(guided_phases[name] for name in ("fc1", "fc2", "token")) >= 5, guided_phases


def test_guided_cuts_fall_back_to_even_ones():
    assert fast._guided(96, 4, 8, 8, (2, 1)) == ([(0, 32), (32, 64), (64, 80), (80, 96)], 2)
    assert fast._guided(96, 3, 8, 8, (2, 1)) == (fast._split(96, 3, 8, 8), 3)  # an odd count: even, all "wide"
    even = fast._split(48, 4, 8, 16)  # narrow pieces would be under `least`: _split's (three pieces here)
    assert fast._guided(48, 4, 8, 16, (2, 1)) == (even, len(even)) and len(even) == 3
    for n, parts, least in itertools.product((16, 100, 768, 3072, 4999), (2, 4, 6, 32), (1, 16, 56)):
        tiles, wide = fast._guided(n, parts, 8, least, (2, 1))
        assert covers(tiles, (n,)), (n, parts)
        widths = [b - a for a, b in tiles]
        assert min(widths) >= least or tiles == [(0, n)], (n, parts, least)
        if wide < len(tiles):  # guided: as many pieces as asked, every wide one wider than every narrow one
            assert len(tiles) == parts and wide == parts // 2
            assert min(widths[:wide]) > max(widths[wide:]), (n, parts, least, widths)


def test_greedy_makespan():
    assert fast.greedy_makespan([3, 1, 1, 1], 2) == 3
    assert fast.greedy_makespan([1] * 8, 4) == 2
    assert fast.greedy_makespan([1, 1, 4], 2) == 5  # hand-out order, not the best order: a model of the queue
    assert fast.greedy_makespan([2, 2], 8) == 2


class Float32Only(np.ndarray):
    """An array that fails any NumPy operation taking or giving anything but float32 (bool masks allowed)."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=(), **kwargs):
        for value in inputs + tuple(out):
            dtype = np.asarray(value).dtype if not isinstance(value, (int, float)) else None
            if isinstance(value, float):
                raise AssertionError(f"{ufunc.__name__}: a Python float mixed in (write np.float32(...))")
            if dtype is not None and dtype not in (np.float32, np.bool_):
                raise AssertionError(f"{ufunc.__name__}: operand of dtype {dtype}")
        plain_in = [v.view(np.ndarray) if isinstance(v, Float32Only) else v for v in inputs]
        plain_out = tuple(v.view(np.ndarray) if isinstance(v, Float32Only) else v for v in out)
        if plain_out:
            kwargs["out"] = plain_out
        result = getattr(ufunc, method)(*plain_in, **kwargs)
        for r in result if isinstance(result, tuple) else (result,):
            if isinstance(r, np.ndarray):
                assert r.dtype in (np.float32, np.bool_), f"{ufunc.__name__} gave {r.dtype}"
        if plain_out:
            return out[0] if len(out) == 1 else out
        return result.view(Float32Only) if isinstance(result, np.ndarray) and result.ndim else result


def test_every_operation_stays_float32(monkeypatch):
    """Weights, input and every work buffer only take float32 operands: a float64 scalar or array
    anywhere in the fast path (a silent upcast that the final float32 output would hide) fails."""
    def as_float32_only(tree):
        if isinstance(tree, dict):
            return {k: as_float32_only(v) for k, v in tree.items()}
        if isinstance(tree, list):
            return [as_float32_only(v) for v in tree]
        return np.asarray(tree).view(Float32Only)

    get = fast._Scratch.get
    monkeypatch.setattr(fast, "_plain", as_float32_only)
    monkeypatch.setattr(fast._Scratch, "get", lambda self, name, shape: get(self, name, shape).view(Float32Only))
    monkeypatch.setattr(fast, "_local", type(fast._local)())  # fresh work buffers
    model = MlpMixer(random_state_dict(config_for("mixer_s32_224", depth=2)))
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32).view(Float32Only)
    tokens = fast.forward_features(x, model.params, model.config.patch_size, workers=2)
    assert tokens.dtype == np.float32
    with pytest.raises(AssertionError, match="float64|Python float"):  # the check itself can fail
        np.multiply(x, np.float64(0.5))
    with pytest.raises(TypeError, match="float32"):
        fast.forward_features(x.view(np.ndarray).astype(np.float64), model.params, model.config.patch_size)


def test_the_readable_path_runs_one_image_at_a_time(monkeypatch):
    """model(x, fast=False) feeds layers.forward_features one image at a time (a big batch's temporaries
    made it twice as slow per image at B=16), with the same answers as the batched layers."""
    model = MlpMixer(random_state_dict(config_for("mixer_s32_224", depth=2)))
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224), dtype=np.float32)
    p = model.params
    batched = layers.forward(x, p, model.config.patch_size)
    seen = []
    real = layers.forward_features

    def spy(images, *args, **kwargs):
        seen.append(len(images))
        return real(images, *args, **kwargs)

    monkeypatch.setattr(layers, "forward_features", spy)
    np.testing.assert_allclose(model(x, fast=False), batched, rtol=1e-6, atol=1e-6)
    assert seen == [1, 1, 1]


def test_float64_models_take_the_readable_path():
    model = MlpMixer(random_state_dict(config_for("mixer_s32_224", depth=1))).astype(np.float64)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224))
    out = model(x)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, model(x, fast=False))


def test_fast_gelu_is_as_accurate_as_the_readable_one():
    x = np.concatenate([np.linspace(-10, 10, 2_000_001, dtype=np.float32),
                        np.geomspace(1e-38, 10, 200_000).astype(np.float32),
                        -np.geomspace(1e-38, 10, 200_000).astype(np.float32),
                        np.float32([0, -0.0, 1, -1, 1e20, -1e20, 3e38, -3e38])])
    got = fast.gelu_(x.copy(), fast._Scratch())
    assert got.dtype == np.float32
    x64 = x.astype(np.float64)
    exact = x64 * 0.5 * (1 + np.frompyfunc(math.erf, 1, 1)(x64 / math.sqrt(2)).astype(np.float64))
    err = np.abs(got - exact)
    readable_err = np.abs(layers.gelu(x) - exact)
    bound = 2.5e-7 * np.maximum(1, np.abs(x64))  # about the float32 rounding of x itself
    assert np.all(readable_err <= bound)
    bound = 2e-7 * np.maximum(1, np.abs(x64))  # fast.py says 1.6e-7, measured here; NumPy's exp varies by CPU
    worst = np.argmax(err / bound)
    assert np.all(err <= bound), f"GELU error {err[worst]:.3g} at x = {x[worst]}"
    assert np.isnan(fast.gelu_(np.float32([np.nan]), fast._Scratch()))[0]


def test_fast_gelu_matches_torch():
    tiny = np.geomspace(1e-30, 12, 2_000_000).astype(np.float32)  # dense near 0, where the error is relative
    x = np.concatenate([np.linspace(-12, 12, 400_001, dtype=np.float32), tiny, -tiny,
                        np.float32([0, 60, -60, 1e30, -1e30])])
    got = fast.gelu_(x.copy(), fast._Scratch())
    want = torch.nn.functional.gelu(torch.from_numpy(x.astype(np.float64))).numpy()
    assert got.dtype == np.float32
    # within 2.5e-7 relative to |x| (2 float32 steps of GELU(x) ~ x/2 near 0), 2e-7 x max(1, |x|) further out
    assert np.all(np.abs(got - want) <= np.minimum(2.5e-7 * np.abs(x), 2e-7 * np.maximum(1, np.abs(x))) + 1e-37)
    twin = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()  # torch's own float32 GELU
    moderate = np.abs(x) <= 60
    assert np.all(np.abs(got - twin)[moderate] <= 1e-6 * np.maximum(1, np.abs(x[moderate])))


def test_fast_path_does_not_copy_the_weights(make_checkpoint):
    path, _ = make_checkpoint("mixer_b16_224")
    model = load_model(str(path))
    assert isinstance(model.params["blocks"][0]["mlp_channels"]["fc1"]["weight"], np.memmap)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    model(x)  # work buffers of this thread now exist
    weight_bytes = 4 * model.num_params()
    tracemalloc.start()
    try:
        model(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < weight_bytes / 10, f"the fast path allocated {peak / 2**20:.0f} MB for one image"


@pytest.fixture(scope="module")
def small_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fast") / "s32-2.safetensors"
    save_checkpoint(random_state_dict(config_for("mixer_s32_224", depth=2), seed=3), path)
    return path


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, name in enumerate(["b.png", "a.jpg", "c.jpeg", "d.bmp", "e.webp"]):
        Image.fromarray(rng.integers(0, 256, (60 + 30 * i, 90, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_batches_give_the_same_answers(small_model_file, photo_folder):
    model = load_model(str(small_model_file))
    photos = sorted(p for p in photo_folder.iterdir() if p.suffix != ".txt")
    one_by_one = [predict(p, top_k=3, model=model) for p in photos]
    for batch_size in (2, 5, 64):
        batched = predict(photos, top_k=3, model=model, batch_size=batch_size)
        assert [[label for label, _ in r] for r in batched] == [[label for label, _ in r] for r in one_by_one]
        np.testing.assert_allclose([[p for _, p in r] for r in batched], [[p for _, p in r] for r in one_by_one],
                                   rtol=1e-5)
    assert len({tuple(label for label, _ in r) for r in one_by_one}) > 1  # not one answer for all
    with pytest.raises(MixerError, match="batch_size must be a positive integer, got 0"):
        predict(photos, model=model, batch_size=0)
    with pytest.raises(MixerError, match="top_k must be a positive integer, got -3"):
        predict(photos, model=model, top_k=-3)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "numpy_mixer", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_takes_folders_and_batch_size(small_model_file, photo_folder):
    files = sorted(str(p) for p in photo_folder.iterdir() if p.suffix != ".txt")
    by_folder = run_cli("predict", photo_folder, "--weights", small_model_file, "--batch-size", 2, "--top-k", 2)
    by_files = run_cli("predict", *files, "--weights", small_model_file, "--batch-size", 1, "--top-k", 2)
    assert by_folder.returncode == 0, by_folder.stderr
    assert by_folder.stdout == by_files.stdout
    printed = [line for line in by_folder.stdout.splitlines() if not line.startswith(" ")]
    assert printed == files  # every image in the folder, sorted; notes.txt skipped
    assert by_folder.stderr == ""  # no progress bar when stderr is not a terminal
    bad = run_cli("predict", photo_folder, "--weights", small_model_file, "--batch-size", 0)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "numpy-mixer: error: argument --batch-size: must be at least 1, got 0 - see numpy-mixer predict --help"]
    empty = photo_folder.parent / "empty"
    empty.mkdir(exist_ok=True)
    nothing = run_cli("predict", empty, "--weights", small_model_file)
    assert nothing.returncode == 1 and "folder has no image files" in nothing.stderr
    assert len(nothing.stderr.strip().splitlines()) == 1


def run_bench(*args):
    return subprocess.run([sys.executable, "-W", "error", os.path.join(REPO, "benchmarks", "bench.py"), "--tiny",
                           *map(str, args)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=REPO))


def test_benchmark_tiny_prints_one_table_per_thread_count(tmp_path):
    """-W error: the benchmark's own code paths (the ONNX export included) print no warnings."""
    too_many = (os.cpu_count() or 1) + 1
    result = run_bench("--markdown", "--threads", f"1,2,{too_many}", "--json", tmp_path / "rows.json")
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    out = result.stdout
    assert f"skipping --threads {too_many}" in out
    headers = [line for line in out.splitlines() if line.startswith("|  |")]
    threads = [1, 2] if (os.cpu_count() or 1) >= 2 else [1]
    assert len(headers) == len(threads), out
    assert all(h.startswith("|  | numpy_mixer | PyTorch | ONNX Runtime |") for h in headers), out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert sum(line.startswith("| batch 1: img/s (% ceiling)") for line in table) == len(threads)
    assert any(line.startswith("| cold start") for line in table)
    assert any(line.startswith("| peak memory") for line in table)
    assert "GFLOP/image" in out and "matmul ceiling" in out and "roofline" not in out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["threads"], r["batch"]) for r in rows] == [(t, b) for t in threads for b in (1, 2)]
    for r in rows:
        assert set(r) == {"threads", "batch", "numpy_mixer", "pytorch", "onnxruntime", "ceiling_gflops"}
        assert all(r[k] > 0 for k in ("numpy_mixer", "pytorch", "onnxruntime", "ceiling_gflops")), r


def test_benchmark_profile(tmp_path):
    """--profile: a real parallel pass taken apart, per thread count and batch, the parts adding up."""
    result = run_bench("--profile", "--threads", "1,2", "--json", tmp_path / "profile.json")
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    rows = json.loads((tmp_path / "profile.json").read_text())
    assert [(r["threads"], r["batch"]) for r in rows] == [(t, b) for t in (1, 2) for b in (1, 2)]
    assert [r["mode"] for r in rows] == ["one", "one"] + ["processes" if processes.supported() else "threads"] * 2
    for r in rows:
        # the tasks hold most of a pass, and they run about as fast as the same tasks alone (a factor of 2
        # off would be a mix-up of workers, phases or plans, not noise). With 2 workers on a machine that
        # something else keeps busy, a descheduled worker makes the others wait: sync, not critical, grows
        busy = 0.3 if r["threads"] == 1 else 0.1
        assert 0 < r["outside_s"] < 0.5 * r["wall_s"] and r["critical_s"] > busy * r["wall_s"], r
        assert 0.5 < r["contention"] < 1.8, r
        assert r["sync_s"] > -0.05 * r["wall_s"], r  # the longest worker's span holds the busiest phases
        assert 0 <= r["caller_busiest"] <= 1 and 1 <= r["slowest_worker"] < 2, r
        if r["threads"] == 1:  # one worker: no one to wait for, nothing above the mean
            assert r["imbalance_s"] == 0 and abs(r["sync_s"]) < 0.05 * r["wall_s"], r
            assert r["caller_busiest"] == 1 and r["slowest_worker"] == 1, r
    first, second = (r["critical_by_kind_s"] for r in rows[:2])
    assert second["fc1"] > first["fc1"] and second["token"] > first["token"]  # batch 2 costs more than batch 1


@pytest.mark.parametrize("where", ["folder", "missing"])
def test_benchmark_refuses_a_json_path_it_cannot_write_before_it_runs(tmp_path, where):
    path = tmp_path if where == "folder" else tmp_path / "missing" / "rows.json"
    start = time.monotonic()
    result = run_bench("--phases", "--json", path)
    assert result.returncode == 1 and time.monotonic() - start < 60, result.stderr
    assert result.stderr.strip().count("\n") == 0 and f"--json {path}: " in result.stderr, result.stderr
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)  # no rows.json.partial left


@pytest.mark.parametrize("args", [("--threads", "abc"), ("--threads", "1,,2"), ("--threads", "0"),
                                  ("--profile", "--threads", "2,x"), ("--phases", "--phase-workers", "two")])
def test_benchmark_refuses_bad_counts_in_one_line(args):
    result = run_bench(*args)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "takes comma-separated positive integers" in result.stderr


def test_benchmark_kernels():
    """--kernels: each of the model's matmuls, NumPy against PyTorch, and the GELUs, with real figures."""
    result = run_bench("--kernels")
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    c = config_for("mixer_s32_224")
    for B in (1, 2):
        for name in ("token fc1", "token fc2", "channel fc1", "channel fc2"):
            row = next(line for line in lines if line.startswith(f"batch {B}: {name} ["))
            ours, theirs, ratio = row.split("]")[-1].split()
            assert float(ours) > 0 and float(theirs) > 0 and ratio.endswith("x")
    # the fast path's own layout: hidden-unit-major for few rows (49 at batch 1 and 98 at 2 for s32)
    assert fast.hidden_major(c.num_patches * 2)
    assert f"batch 1: channel fc1 [{c.channels_dim}, {c.embed_dim}] @ [{c.embed_dim}, {c.num_patches}]" in result.stdout
    assert f"batch 2: channel fc2 [{c.embed_dim}, {c.channels_dim}] @ [{c.channels_dim}, {2 * c.num_patches}]" in result.stdout
    for name in ("numpy_mixer.fast.gelu_", "numpy_mixer.layers.gelu", "torch.nn.functional.gelu"):
        assert float(next(line for line in lines if line.startswith(name)).split()[-1]) > 0


@pytest.mark.parametrize("mode", ["processes", "threads"])
def test_benchmark_phase_model(tmp_path, mode):
    result = run_bench("--phases", "--phase-workers", "2,16", "--phase-mode", mode, "--json", tmp_path / "phases.json")
    assert result.returncode == 0, result.stderr
    assert "a model, not a measurement" in result.stdout and f"on worker {mode}" in result.stdout
    rows = json.loads((tmp_path / "phases.json").read_text())
    assert [(r["batch"], r["workers"]) for r in rows] == [(b, w) for b in (1, 2) for w in (1, 2, 16)]
    for r in rows:
        per_worker = fast.process_tasks_per_worker(r["workers"]) if mode == "processes" else fast.TASKS_PER_WORKER
        # the task counts printed are the planner's own for that mode (bench.py imports it from fast.py)
        c = config_for("mixer_s32_224")
        plan = fast.plan(r["batch"], c.num_patches, c.embed_dim, c.tokens_dim, c.channels_dim, r["workers"],
                         3 * c.patch_size ** 2, per_worker)
        assert r["mode"] == mode and r["tasks"] == plan.counts()
        assert 0 < r["efficiency"] <= 1.5 and r["predicted_s"] > 0  # a model of measured times: noisy, not > 1.5
        if r["workers"] == 1:
            assert r["barrier_s"] == 0


@pytest.mark.parametrize("args, fragment", [(["16,x"], "THREADS is a list like 16,4"),
                                            (["16", "x9"], "SECONDS is a whole number of seconds"),
                                            (None, "cannot make OUT_FOLDER")])
def test_manycore_refuses_bad_arguments_before_it_runs(tmp_path, args, fragment):
    """benchmarks/manycore.sh, the lent machine's one run: a bad argument is one line and exit 2 at once."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = [str(blocker / "out")] if args is None else [str(tmp_path / "out"), *args]
    result = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "manycore.sh"), *out], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
    assert result.stdout == "" and result.stderr.strip().count("\n") == 0, result.stderr


def run_ab(*args, cwd=None, tiny=True):
    return subprocess.run([sys.executable, "-W", "error", os.path.join(REPO, "benchmarks", "ab.py"),
                           *(["--tiny"] if tiny else []), *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_ab_times_variants_in_turns(tmp_path):
    """benchmarks/ab.py: variants of this checkout (an environment setting, a thread count), torch, and a tree
    whose numpy_mixer fails to import: the others timed in turns, the failure named in one line."""
    broken = tmp_path / "broken"
    (broken / "numpy_mixer").mkdir(parents=True)
    (broken / "numpy_mixer" / "__init__.py").write_text("raise ImportError('this tree is broken on purpose')\n")
    result = run_ab("--rounds", "2", "--repeats", "2", "--markdown", "--json", tmp_path / "ab.json",
                    f"base={REPO}", f"one={REPO}:NUMPY_MIXER_TASKS_PER_WORKER=1,threads=1", "torch",
                    f"bad={broken}", cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # one variant failed
    assert "Warning" not in result.stderr, result.stderr
    assert "bad failed: ImportError: this tree is broken on purpose" in result.stderr.splitlines()
    assert "round 2 of 2 done" in result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert table[0] == "| threads | batch | base | one (1 thread) | torch | bad |"
    assert [line.split(" | ")[1] for line in table[2:]] == ["1", "2"]
    assert all(line.endswith("| - |") for line in table[2:])  # the failed variant has no figures
    rows = json.loads((tmp_path / "ab.json").read_text())
    assert [(r["variant"], r["batch"]) for r in rows] == [(v, b) for b in (1, 2) for v in ("base", "one", "torch")]
    for r in rows:
        assert r["img_s"] > 0 and r["passes"] == 4, r  # 2 rounds of 2 passes
        assert r["ratio"] == 1.0 if r["variant"] == "base" else r["ratio"] > 0, r
    assert {r["threads"] for r in rows if r["variant"] == "one"} == {1}


@pytest.mark.parametrize("args,fragment", [
    ((), "name at least one VARIANT"),
    (("base",), "write NAME=TREE"),
    (("torch=.",), "write NAME=TREE"),
    (("base=/",), "holds no numpy_mixer package"),
    ((f"base={REPO}:threads=0",), "threads='0' is not a whole number"),
    ((f"base={REPO}:X",), "neither ENV=VALUE nor threads=N"),
    ((f"a={REPO}", f"a={REPO}"), "variant names must differ"),
    (("--rounds", "0", f"a={REPO}"), "--rounds 0"),
    (("--seconds", "nan", f"a={REPO}"), "--seconds nan"),
    (("--arch", "mixer_x99", f"a={REPO}"), "--arch 'mixer_x99' is not a Mixer timm ships"),
    (("--json", "/dev/null", f"a={REPO}"), "--json /dev/null: is not a regular file"),
])
def test_ab_refuses_bad_variants_in_one_line(args, fragment):
    result = run_ab(*args, tiny="--arch" not in args)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr, result.stderr


def test_ab_stopped_by_sigterm_prints_what_it_timed(tmp_path):
    """`timeout` (benchmarks/manycore.sh) stops ab.py with SIGTERM: it prints the table of the passes timed so far
    and leaves no process or temporary weights behind."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "benchmarks", "ab.py"), "--tiny", "--rounds", "1000",
                             "--repeats", "1", f"base={REPO}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        for line in proc.stderr:
            if line.startswith("round 1 of 1000 done"):
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "stopped (SIGTERM): the table holds the passes timed so far" in err
    assert proc.returncode == 143 and "Traceback" not in err, err
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [row[1] for row in rows] == ["1", "2"], out  # threads, batch, img/s of base
    assert all(float(row[2]) > 0 for row in rows), out
    assert not list(tmp_path.iterdir())  # the weights' temporary folder is gone

"""numpy_mixer against PyTorch (timm, eager) and ONNX Runtime on this CPU: one table per thread count.

    python benchmarks/bench.py                 # mixer_b16_224, batches 1, 8, 32, 5 repeats, all cores
    python benchmarks/bench.py --threads 1,2,4,8,16 --json scaling.json   # one table per thread count
    python benchmarks/bench.py --phases        # the phase model: predicted scaling from 1-thread task times
    python benchmarks/bench.py --kernels       # the matmuls and GELU on 1 thread, NumPy against PyTorch
    python benchmarks/bench.py --profile       # where a real parallel pass spends its time, phase by phase
    python benchmarks/bench.py --tiny          # a few-block mixer_s32 in under a minute (CI)
    python benchmarks/bench.py --markdown      # the table as markdown, for the README

Throughput is images per second, the median of --repeats timed forward passes per framework,
taken in turns (numpy, torch, onnxruntime, numpy, ...) so a busy machine slows all alike. Each timed
pass starts after a short pause, so that threads the framework before it left spinning (OpenMP's,
ONNX Runtime's pool) are asleep again and do not take a core from it.
Every framework runs with the same thread count: numpy_mixer's BLAS (and so its worker count),
torch.set_num_threads, ONNX Runtime's intra-op pool. Thread counts above os.cpu_count() are skipped.
"% ceiling" divides the model's FLOPs per second (2 x its multiply-adds, counted from the config)
by what one large float32 NumPy matmul reaches with as many threads in the same run: the matmul
ceiling. It is not a hard limit: a framework with fused, pre-packed kernels can pass it.
Cold start is the wall time of a whole fresh process that classifies one photo from a local
safetensors file (the numpy-mixer command, and the equivalent timm script, both on the last thread
count); peak memory is the peak of its processes' summed proportional set size (PSS: shared pages
counted once; sampled every 50 ms from /proc on Linux, which takes the timed run a little CPU), or
elsewhere its largest process's maximum resident set.
--json FILE writes one row per thread count and batch: {threads, batch, numpy_mixer, pytorch,
onnxruntime (img/s, null when absent), ceiling_gflops}. --phases prints the phase model instead (see
phase_model).
Weights are random (numpy_mixer.checkpoint): the real ones cannot be downloaded here, and speed
does not depend on the values. torch, timm, onnx and onnxruntime are optional.
"""
import argparse
import atexit
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

from numpy_mixer import fast, layers, processes
from numpy_mixer.checkpoint import config_for, random_state_dict, save_checkpoint
from numpy_mixer.model import load_model

PAUSE = 0.2  # seconds before each timed pass

TIMM_SCRIPT = """
import sys, torch, timm
from PIL import Image
from safetensors.torch import load_file
torch.set_num_threads({threads})
state = load_file(sys.argv[2])
model = {create}
model.load_state_dict(state)
model.eval()
transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
x = transform(Image.open(sys.argv[1]).convert("RGB"))[None]
with torch.inference_mode():
    probs = model(x).softmax(-1)[0]
top = probs.topk(5)
for p, i in zip(top.values.tolist(), top.indices.tolist()):
    print(f"{{p:7.2%}}  class {{i}}")
"""

# run a command in a fresh process; print its wall time, its peak memory (kB) and its exit code. The
# memory is the peak, sampled every 50 ms, of the proportional set size (PSS: pages shared between
# processes counted once, split between them) summed over the command and its child processes, from
# /proc (Linux); elsewhere, the largest single process's maximum resident set.
MEASURE = """
import os, resource, subprocess, sys, time

def tree(root):
    children = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out

def pss_kb(root):
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, ValueError, IndexError):
            pass
    return total

start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
sampled = os.path.exists(f"/proc/{os.getpid()}/smaps_rollup")
peak = 0
while proc.poll() is None:
    if sampled:
        peak = max(peak, pss_kb(proc.pid))
    time.sleep(0.05)
wall = time.perf_counter() - start
print(wall, peak if sampled else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, proc.returncode)
"""


def model_flops(config):
    """FLOPs of one image: 2 x the multiply-adds of the stem, the blocks and the head."""
    c = config
    N, C, T, H = c.num_patches, c.embed_dim, c.tokens_dim, c.channels_dim
    macs = N * C * c.in_chans * c.patch_size ** 2  # stem
    macs += c.depth * (2 * C * N * T + 2 * N * C * H)  # token MLP (fc1, fc2) + channel MLP (fc1, fc2)
    macs += C * c.num_classes  # head
    return 2 * macs


def best_seconds(fn, repeats):
    """The fastest of `repeats` timed calls of fn(), after one untimed (first-call allocations, lazy init)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(n=2048, repeats=5):
    """GFLOP/s of an n x n float32 matmul, best of repeats: the matmul ceiling (at the current BLAS threads)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    return 2 * n ** 3 / best_seconds(lambda: np.matmul(a, b, out=out), repeats) / 1e9


def optional(name):
    try:
        return __import__(name)
    except ImportError:
        return None


def timm_create(arch, config):
    """The timm call that builds arch (or, for a changed depth, its MlpMixer class directly), as source."""
    if config == config_for(arch, num_classes=config.num_classes):
        return f'timm.create_model({arch!r}, pretrained=False, num_classes=state["head.weight"].shape[0])'
    return (f"timm.models.mlp_mixer.MlpMixer(num_classes={config.num_classes}, img_size={config.img_size}, "
            f"patch_size={config.patch_size}, num_blocks={config.depth}, embed_dim={config.embed_dim})")


def torch_runner(arch, state, config):
    """A function running timm's model on a [B, 3, H, W] float32 array, or None without torch/timm."""
    torch, timm = optional("torch"), optional("timm")
    if torch is None or timm is None:
        return None, None
    model = eval(timm_create(arch, config), {"timm": timm, "state": state})
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    model.eval()

    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run, model


def onnx_export(model, img_size, folder):
    """The timm model exported to folder/model.onnx with a free batch axis, or None without onnx/onnxruntime."""
    torch = optional("torch")
    if model is None or optional("onnxruntime") is None or optional("onnx") is None:
        return None
    path = os.path.join(folder, "model.onnx")
    dummy = torch.zeros(1, 3, img_size, img_size)
    names = dict(input_names=["x"], output_names=["logits"])
    try:  # the torch.export-based exporter (the default since torch 2.9; needs onnxscript)
        with warnings.catch_warnings():  # torch's own FutureWarnings from inside the exporter, not ours
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(model, (dummy,), path, dynamo=True, verbose=False,
                              dynamic_shapes={"x": {0: torch.export.Dim("B")}}, **names)
    except Exception:  # an older torch: the TorchScript exporter, whose deprecation notice is not ours to print
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", getattr(torch.jit, "TracerWarning", Warning))
            torch.onnx.export(model, (dummy,), path, dynamo=False,
                              dynamic_axes={"x": {0: "B"}, "logits": {0: "B"}}, **names)
    return path


def onnx_runner(path, threads):
    """A function running the exported model in ONNX Runtime on `threads` intra-op threads."""
    ort = optional("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def threads_runner(model):
    """model(x) with the fast path on worker threads instead of worker processes."""
    def run(x):
        old = os.environ.get("NUMPY_MIXER_WORKERS")
        os.environ["NUMPY_MIXER_WORKERS"] = "threads"
        try:
            return model(x)
        finally:
            if old is None:
                del os.environ["NUMPY_MIXER_WORKERS"]
            else:
                os.environ["NUMPY_MIXER_WORKERS"] = old
    return run


def blas_threads(n):
    """numpy's BLAS (and so numpy_mixer's worker count) limited to n threads, while in the with-block."""
    threadpoolctl = optional("threadpoolctl")
    if threadpoolctl is None:
        raise SystemExit("bench.py needs threadpoolctl to give numpy_mixer the same thread count as the others")
    return threadpoolctl.threadpool_limits(n, user_api="blas")


def positive_ints(spec, option):
    """"1,2,4" -> [1, 2, 4]; anything else ends the run with one line naming the option."""
    try:
        values = [int(v) for v in spec.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise SystemExit(f"{option} takes comma-separated positive integers, got {spec!r}")
    return values


def thread_counts(spec):
    """--threads "1,2,4" -> the counts up to os.cpu_count(); a note names the ones skipped."""
    counts = positive_ints(spec, "--threads")
    cores = os.cpu_count() or 1
    skipped = [t for t in counts if t > cores]
    if skipped:
        print(f"note: skipping --threads {','.join(map(str, skipped))}: this machine has {cores} cores")
    return [t for t in counts if t <= cores]


def time_frameworks(runners, batch_sizes, repeats, img_size, rng):
    """{batch: {framework: img/s}}: medians of `repeats` passes, the frameworks taken in turns."""
    speed = {}
    for B in batch_sizes:
        x = rng.standard_normal((B, 3, img_size, img_size), dtype=np.float32)
        times = {name: [] for name in runners}
        for run in runners.values():  # warm up: first-call allocations, lazy init
            run(x)
        for _ in range(repeats):
            for name, run in runners.items():
                time.sleep(PAUSE)
                start = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - start)
        speed[B] = {name: B / statistics.median(t) for name, t in times.items()}
    return speed


# --- the phase model ----------------------------------------------------------------------------------

def python_seconds_per_call(repeats=2000):
    """Seconds of Python and NumPy dispatch per NumPy call in a task (the part that holds the GIL):
    a LayerNorm task on a [2, 8] tile, whose arithmetic is nothing, divided by its NumPy calls."""
    scratch = fast._Scratch()
    x, out = np.ones((2, 8), np.float32), np.empty((2, 8), np.float32)
    w, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    best = math.inf
    for _ in range(5):
        start = time.thread_time()  # CPU time: what the calls cost, not what a busy machine took meanwhile
        for _ in range(repeats):
            fast.layer_norm_rows(x, w, b, out, scratch)
        best = min(best, (time.thread_time() - start) / repeats)
    return best / fast.numpy_calls("norm", (0, 2), {})


def best_round(barrier, rounds, trials):
    """Seconds per round of barrier.wait(), the best of `trials` runs of `rounds`."""
    best = math.inf
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(rounds):
            barrier.wait()
        best = min(best, (time.perf_counter() - start) / rounds)
    return best


def barrier_seconds(rounds=200, trials=10):
    """Seconds per threading.Barrier round between 2 threads (the model charges W/2 of these per
    barrier on threads). Wall time: on a busy machine even the best is pessimistic."""
    barrier = threading.Barrier(2)
    helper = threading.Thread(target=lambda: [barrier.wait() for _ in range(rounds * trials)])
    helper.start()
    best = best_round(barrier, rounds, trials)
    helper.join()
    return best


FLAG_BARRIER_HELPER = """
import sys, numpy as np
from numpy_mixer import processes
control = np.frombuffer(processes.map_file(sys.argv[1]), np.int64)
barrier = processes.FlagBarrier(control, 1, 2)
for _ in range(int(sys.argv[2])):
    barrier.wait()
"""


def flag_barrier_seconds(rounds=2000, trials=10):
    """Seconds per round of numpy_mixer.processes' flag barrier between this process and one helper
    process (the model charges one round per barrier on worker processes). Wall time, best of trials."""
    control = processes.SharedFile(3 * processes.FLAG_STRIDE * 8)
    helper = None

    def alive():  # checked now and then while the barrier waits long: a dead helper would never come
        if helper.poll() is not None:
            raise SystemExit(f"bench.py: the flag-barrier helper process exited with code {helper.returncode}")

    try:
        barrier = processes.FlagBarrier(np.frombuffer(control.map, np.int64), 0, 2, alive=alive)
        helper = subprocess.Popen([sys.executable, "-c", FLAG_BARRIER_HELPER, control.path, str(rounds * trials + 1)],
                                  env=processes.helper_env())
        barrier.wait()  # the helper is up
        best = best_round(barrier, rounds, trials)
        helper.wait(timeout=60)
    finally:
        if helper is not None and helper.poll() is None:  # ^C or an error here: the helper would wait forever
            helper.kill()
            helper.wait()
        control.unlink()
    return best


def task_times(x, model, plans, repeats, per_worker):
    """{W: [(phase, [seconds per task])]}: one forward pass with each W's plan (per_worker(W) tasks per
    worker) on 1 thread, the plans taken in turns (so that a busy spell hits all alike), each task's best
    of repeats."""
    best = {}
    for _ in range(repeats):
        for W in plans:
            _, record = fast.time_tasks(x, model.params, model.config.patch_size, W, per_worker(W))
            old = best.get(W, record)
            best[W] = [(name, [min(a, b) for a, b in zip(o, n)]) for (name, o), (_, n) in zip(old, record)]
    return best


PHASE_KINDS = ("stem+norm", "token", "norm", "fc1", "fc2")


def phase_model(model, arch, batch_sizes, workers, rng, markdown, repeats=3, mode="processes"):
    """Time every task of one forward pass on one thread, for the plan of each W; predict each W's
    makespan as the sum over phases of that phase's schedule plus the barriers:
    - both: a greedy schedule (tasks in hand-out order, each to the worker free first: the task queue);
    - mode "processes" (worker processes, the default on x86-64): the plan of process_tasks_per_worker(W),
      one flag-barrier round per barrier;
    - mode "threads": at least the phase's GIL-held Python time, plus W/2 two-thread barrier rounds per
      barrier."""
    P = model.config.patch_size
    N, C, T, H = fast.model_shape(model.params, P, model.config.img_size)
    threads = mode == "threads"
    per_worker = (lambda W: fast.TASKS_PER_WORKER) if threads else fast.process_tasks_per_worker
    per_call = python_seconds_per_call() if threads else 0.0  # processes run their Python side by side
    per_barrier = barrier_seconds() if threads else flag_barrier_seconds()
    print(f"phase model of {arch} on worker {mode}: task times measured one at a time on "
          f"1 thread (best of {repeats}); "
          + (f"Python per NumPy call {per_call * 1e6:.2f} us, a 2-thread barrier round {per_barrier * 1e6:.0f} us"
             if threads else f"a 2-process flag-barrier round {per_barrier * 1e6:.1f} us")
          + "; a model, not a measurement. Phase columns: predicted ms per forward pass"
          + (", * where the Python (GIL) time bounds it" if threads else ""))
    results = []
    header = ["batch", "W", "tasks token/norm/fc1/fc2", "predicted ms", "img/s", "efficiency",
              *PHASE_KINDS, "barriers"]
    table = []
    with blas_threads(1):
        for B in batch_sizes:
            x = rng.standard_normal((B, 3, model.config.img_size, model.config.img_size), dtype=np.float32)
            fast.time_tasks(x, model.params, P, 1)  # warm up
            records = task_times(x, model, workers, repeats, per_worker)
            one = sum(sum(s) for _, s in records[1])  # W=1's plan on 1 worker: the 1-thread time
            for W in workers:
                plan = fast.plan(B, N, C, T, H, W, 3 * P * P, per_worker(W))
                tiles = plan.phases(len(model.params["blocks"]))
                by_kind = {k: [0.0, 0.0] for k in PHASE_KINDS}  # predicted seconds, of which GIL-bound
                for (name, seconds), (_, phase_tiles) in zip(records[W], tiles):
                    scheduled = fast.greedy_makespan(seconds, W)
                    gil = per_call * sum(fast.numpy_calls(name, tile, plan.shape) for tile in phase_tiles)
                    by_kind[name][0] += max(scheduled, gil)
                    by_kind[name][1] += gil if gil > scheduled else 0.0
                rounds = W / 2 if threads else 1
                barriers = (len(tiles) - 1) * per_barrier * rounds if W > 1 else 0.0
                makespan = sum(v[0] for v in by_kind.values()) + barriers
                efficiency = one / (W * makespan)
                counts = plan.counts()
                results.append(dict(mode=mode, batch=B, workers=W, tasks=counts, one_thread_s=one,
                                    predicted_s=makespan, efficiency=efficiency, barrier_s=barriers,
                                    phase_s={k: v[0] for k, v in by_kind.items()},
                                    gil_bound_s={k: v[1] for k, v in by_kind.items()}))
                table.append([str(B), str(W), "/".join(str(counts[k]) for k in ("token", "norm", "fc1", "fc2")),
                              f"{makespan * 1e3:.1f}", f"{B / makespan:.2f}", f"{efficiency:.0%}",
                              *(f"{v[0] * 1e3:.1f}{'*' if v[1] > v[0] / 2 else ''}" for v in by_kind.values()),
                              f"{barriers * 1e3:.1f}"])
    print(fmt_table(header, table, markdown))
    return results


def kernels(model, arch, batch_sizes, markdown, repeats=7):
    """The kernels under numpy_mixer on one thread, against PyTorch's: GFLOP/s of each of the model's
    matmuls, as one whole matmul (numpy_mixer splits it into tiles), and GELU in ns per value."""
    torch = optional("torch")
    P = model.config.patch_size
    N, C, T, H = fast.model_shape(model.params, P, model.config.img_size)
    rng = np.random.default_rng(0)

    def best(fn):
        return best_seconds(fn, repeats)

    rows = []
    with blas_threads(1):
        if torch is not None:
            torch.set_num_threads(1)
        for B in batch_sizes:
            # (name, M, K, N, b transposed) of out[M, N] = a[M, K] @ b[K, N], laid out as the fast path has
            # them: token mixing weight @ stream; channel mixing stream @ weight.T (a [N, K] weight), or for a
            # few rows (fast.hidden_major) weight @ stream.T into hidden-unit-major activations, then weight @ hidden
            if fast.hidden_major(N * B):
                channel = [("channel fc1", H, C, N * B, True), ("channel fc2", C, H, N * B, False)]
            else:
                channel = [("channel fc1", N * B, C, H, True), ("channel fc2", N * B, H, C, True)]
            for name, M, K, Nn, transposed in [("token fc1", T, N, B * C, False), ("token fc2", N, T, B * C, False),
                                               *channel]:
                a = rng.standard_normal((M, K), dtype=np.float32)
                b = rng.standard_normal((Nn, K) if transposed else (K, Nn), dtype=np.float32)
                b_view = b.T if transposed else b
                out = np.empty((M, Nn), np.float32)
                flops = 2 * M * K * Nn
                ours = flops / best(lambda: np.matmul(a, b_view, out=out)) / 1e9
                theirs = None
                if torch is not None:
                    ta, to = torch.from_numpy(a), torch.from_numpy(out)
                    tb = torch.from_numpy(b).t() if transposed else torch.from_numpy(b)
                    theirs = flops / best(lambda: torch.mm(ta, tb, out=to)) / 1e9
                rows.append([f"batch {B}: {name} [{M}, {K}] @ [{K}, {Nn}]", f"{ours:.0f}",
                             f"{theirs:.0f}" if theirs else "-", f"{ours / theirs:.2f}x" if theirs else "-"])
        x = rng.standard_normal((N, H), dtype=np.float32)  # one image's channel-MLP hidden values
        work, scratch = x.copy(), fast._Scratch()
        per_value = {"numpy_mixer.fast.gelu_": best(lambda: (np.copyto(work, x), fast.gelu_(work, scratch)))
                     - best(lambda: np.copyto(work, x)),
                     "numpy_mixer.layers.gelu": best(lambda: layers.gelu(x))}
        if torch is not None:
            tx = torch.from_numpy(x)
            per_value["torch.nn.functional.gelu"] = best(lambda: torch.nn.functional.gelu(tx))
        blas = blas_info()  # inside the limit: the thread count it ran with
    print(f"kernels of {arch} on 1 thread ({blas}; torch {torch.__version__ if torch else 'not installed'}); "
          f"best of {repeats}")
    print(fmt_table(["matmul", "NumPy GFLOP/s", "PyTorch GFLOP/s", "NumPy / PyTorch"], rows, markdown))
    print(fmt_table([f"GELU of [{N}, {H}]", "ns per value"],
                    [[k, f"{v / x.size * 1e9:.2f}"] for k, v in per_value.items()], markdown))


def profile_table(model, arch, batch_sizes, counts, repeats, markdown):
    """Where the time of a real parallel pass goes, per thread count and batch: numpy_mixer.fast.profile
    (every worker's time in each phase's tasks and at its barrier) for `repeats` passes, the one of median
    wall time shown; with the same plan's tasks timed one at a time on one thread for comparison."""
    P = model.config.patch_size
    rng = np.random.default_rng(0)
    per_worker = ", ".join(f"{fast.process_tasks_per_worker(W)} on {W}" for W in counts if W > 1)
    print(f"profile of {arch}: one pass, the median of {repeats} by wall time; ms per pass"
          + (f"; tasks per worker process in a matmul phase: {per_worker} workers" if per_worker else "") + ".\n"
          "outside: the call's time outside the phases (patches, weights, starting and collecting the workers); "
          "critical: the sum over phases of the busiest worker's time in its tasks (the span with free "
          "barriers), then by phase kind; sync: the phases' span (the longest worker's) beyond it (barriers, "
          "workers released late); imbalance: the part of critical above the workers' mean; contention: the "
          "workers' summed task time over the same tasks' time one at a time on one thread (1.00: as fast as "
          "alone); caller busiest: the share of phases in which this process (worker 0) was the busiest worker "
          "(1/W: as often as any); slowest worker: the largest worker's summed task time over the workers' mean "
          "(1.00: the imbalance moves from worker to worker, no worker is slow throughout)")
    header = ["threads", "workers", "batch", "img/s", "wall", "outside", "critical", *(f"  {k}" for k in PHASE_KINDS),
              "sync", "imbalance", "contention", "caller busiest", "slowest worker"]
    table, results = [], []
    for W in counts:
        # what forward_features runs: worker processes (their plan) for W > 1 where supported, else threads
        mode = "one" if W == 1 else "processes" if processes.supported() else "threads"
        per_worker = fast.process_tasks_per_worker(W) if mode == "processes" else fast.TASKS_PER_WORKER
        for B in batch_sizes:
            x = rng.standard_normal((B, 3, model.config.img_size, model.config.img_size), dtype=np.float32)
            with blas_threads(1):
                _, record = fast.time_tasks(x, model.params, P, W, per_worker)
            alone = sum(sum(seconds) for _, seconds in record)
            with blas_threads(W):
                fast.profile(x, model.params, P)  # warm up: workers started, pages touched
                runs = sorted((fast.profile(x, model.params, P)[1] for _ in range(repeats)), key=lambda r: r["wall"])
            run = runs[len(runs) // 2]
            workers = run["workers"]
            phases = len(workers[0])
            span = max(sum(work + wait for _, work, wait in w) for w in workers)  # the last worker to finish
            busiest = [max(w[i][1] for w in workers) for i in range(phases)]
            mean = [sum(w[i][1] for w in workers) / len(workers) for i in range(phases)]
            by_kind = {k: sum(b for (name, _, _), b in zip(workers[0], busiest) if name == k) for k in PHASE_KINDS}
            # is the imbalance the same workers every phase, or anyone's? the calling process (worker 0, which
            # also hands out the tasks) busiest in what share of the phases, and the summed task time of the
            # slowest worker over the workers' mean (1.00: nobody slower overall, the imbalance moves around)
            caller = sum(workers[0][i][1] >= busiest[i] for i in range(phases)) / phases
            totals = [sum(work for _, work, _ in w) for w in workers]
            row = dict(threads=W, batch=B, mode=mode, wall_s=run["wall"], outside_s=run["wall"] - span,
                       critical_s=sum(busiest), critical_by_kind_s=by_kind, sync_s=span - sum(busiest),
                       imbalance_s=sum(busiest) - sum(mean), contention=sum(mean) * len(workers) / alone,
                       caller_busiest=caller, slowest_worker=max(totals) / (sum(totals) / len(totals)))
            results.append(row)
            ms = lambda s: f"{s * 1e3:.1f}"  # noqa: E731
            table.append([str(W), mode, str(B), f"{B / run['wall']:.2f}", ms(run["wall"]), ms(row["outside_s"]),
                          ms(row["critical_s"]), *(ms(by_kind[k]) for k in PHASE_KINDS), ms(row["sync_s"]),
                          ms(row["imbalance_s"]), f"{row['contention']:.2f}", f"{caller:.0%}",
                          f"{row['slowest_worker']:.2f}"])
    print(fmt_table(header, table, markdown))
    return results


def measure_process(argv):
    """(wall seconds, peak memory in MB) of one fresh process running argv (see MEASURE)."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, check=True)
    wall, rss_kb, code = out.stdout.split()
    if code != "0":
        raise RuntimeError(f"{' '.join(argv)} failed with exit code {code}")
    return float(wall), int(rss_kb) / 1024


def numpy_mixer_command():
    script = os.path.join(os.path.dirname(sys.executable), "numpy-mixer")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "numpy_mixer"]


def blas_info():
    threadpoolctl = optional("threadpoolctl")
    if threadpoolctl is None:
        return "BLAS: unknown (no threadpoolctl)"
    libs = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    return ", ".join(f"{i['internal_api']} {i['version']} ({i.get('architecture')} kernel, "
                     f"{i['num_threads']} thread{'s' if i['num_threads'] != 1 else ''})"
                     for i in libs) or "BLAS: none found"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt_table(header, rows, markdown):
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="mixer_b16_224", help="timm architecture (default mixer_b16_224)")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated (default 1,8,32)")
    parser.add_argument("--threads", default=str(os.cpu_count() or 1),
                        help="comma-separated thread counts, each framework gets the same (default: all cores)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per framework and batch size (default 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to FILE as JSON")
    parser.add_argument("--phases", action="store_true",
                        help="instead of timing frameworks: the phase model of numpy_mixer.fast (1-thread task "
                             "times, greedy schedule) for W = --phase-workers")
    parser.add_argument("--phase-workers", default="2,4,8,16", help="worker counts for --phases (default 2,4,8,16)")
    parser.add_argument("--phase-repeats", type=int, default=3, help="each task's best of this many (default 3)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing frameworks: where a real parallel pass of numpy_mixer spends its "
                             "time, per --threads and batch (fast.profile)")
    parser.add_argument("--kernels", action="store_true",
                        help="instead of timing frameworks: the model's matmuls and GELU on 1 thread, NumPy "
                             "against PyTorch")
    parser.add_argument("--phase-mode", choices=("processes", "threads"), default=None,
                        help="model worker processes (their plan, flag barriers) or threads (two tasks per "
                             "worker, the GIL); default: what numpy_mixer uses here")
    parser.add_argument("--tiny", action="store_true",
                        help="a 2-block mixer_s32_224, batches 1 and 2, 1 repeat (--profile: the median of 3) (CI)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--compare-threads", action="store_true",
                        help="also time numpy_mixer on worker threads (NUMPY_MIXER_WORKERS=threads)")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the whole-process measurements")
    args = parser.parse_args(argv)
    why = json_path_problem(args.json)
    if why:  # now, not after the run
        raise SystemExit(f"--json {args.json}: {why}; name a file in a folder you can write")
    # stopped by `timeout` (benchmarks/manycore.sh): leave as on Ctrl-C, so that the temporary folders
    # (weights, the ONNX export: hundreds of MB) are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    changes = {}
    if args.tiny:
        args.arch, args.batch_sizes, args.repeats, changes = "mixer_s32_224", "1,2", 1, {"depth": 2}
    batch_sizes = positive_ints(args.batch_sizes, "--batch-sizes")
    config = config_for(args.arch, **changes)
    state = random_state_dict(config, seed=0)
    weights_folder = tempfile.TemporaryDirectory()  # the weights as users have them: a mapped safetensors file
    atexit.register(weights_folder.cleanup)  # removed on the way out, whichever return is taken
    model = load_model(save_checkpoint(state, os.path.join(weights_folder.name, args.arch + ".safetensors")))
    rng = np.random.default_rng(0)
    if args.kernels:
        kernels(model, args.arch, batch_sizes, args.markdown, 1 if args.tiny else 7)
        return 0
    if args.profile:
        counts = thread_counts(args.threads)
        if not counts:
            return 0
        results = profile_table(model, args.arch, batch_sizes, counts, 3 if args.tiny else args.repeats,
                                args.markdown)
        if args.json:
            write_json(args.json, results)
        return 0
    if args.phases:
        if args.phase_mode is None:
            args.phase_mode = "processes" if processes.supported() else "threads"
        workers = positive_ints(args.phase_workers, "--phase-workers")
        results = phase_model(model, args.arch, batch_sizes, [1] + [w for w in workers if w != 1], rng,
                              args.markdown, 1 if args.tiny else args.phase_repeats, args.phase_mode)
        if args.json:
            write_json(args.json, results)
        return 0

    counts = thread_counts(args.threads)
    if not counts:
        return 0
    flops = model_flops(config)
    torch_run, torch_model = torch_runner(args.arch, state, config)
    torch = optional("torch")
    versions = [f"numpy {np.__version__}"]
    for mod in ("torch", "onnxruntime"):
        m = optional(mod)
        if m is not None:
            versions.append(f"{mod} {m.__version__}")
    print(f"{args.arch}{' (2 blocks)' if args.tiny else ''}: {flops / 1e9:.2f} GFLOP/image; "
          f"{os.cpu_count()} x {cpu_name()}; {blas_info()}; {', '.join(versions)}; load average {load_average()}")
    if not torch_run:
        print("(torch/timm not installed: NumPy figures alone)")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"note: {var}={os.environ[var]} is set; it can slow OpenBLAS down")
    rows = []

    # each table printed, and the JSON written, as soon as it is measured: a run cut short (a lent
    # machine's time running out) keeps what it finished
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = onnx_export(torch_model, config.img_size, folder) if torch_run else None
        for threads in counts:
            runners = {"numpy_mixer": lambda x: model(x)}
            if args.compare_threads:
                runners["numpy_mixer threads"] = threads_runner(model)
            if torch_run:
                torch.set_num_threads(threads)
                runners["PyTorch"] = torch_run
            if onnx_path:
                runners["ONNX Runtime"] = onnx_runner(onnx_path, threads)
            with blas_threads(threads):  # numpy_mixer runs one worker per BLAS thread
                ceiling = matmul_gflops()
                speed = time_frameworks(runners, batch_sizes, args.repeats, config.img_size, rng)
                ceiling = max(ceiling, matmul_gflops())  # once before, once after: the better of the two
            keys = {"numpy_mixer": "numpy_mixer", "PyTorch": "pytorch", "ONNX Runtime": "onnxruntime"}
            if args.compare_threads:
                keys["numpy_mixer threads"] = "numpy_mixer_threads"
            for B in batch_sizes:
                rows.append(dict(threads=threads, batch=B, ceiling_gflops=round(ceiling, 1),
                                 **{key: (round(speed[B][name], 3) if name in speed[B] else None)
                                    for name, key in keys.items()}))
            print_speed_table(threads, list(runners), speed, ceiling, flops, batch_sizes, args.markdown)
            if args.json:
                write_json(args.json, rows)

        if not args.no_cold_start:
            from PIL import Image
            photo = os.path.join(folder, "photo.jpg")
            Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(photo, quality=90)
            weights = save_checkpoint(state, os.path.join(folder, "model.safetensors"))
            commands = {"numpy_mixer": numpy_mixer_command() + ["predict", photo, "--weights", weights]}
            if torch_run:
                script = os.path.join(folder, "timm_predict.py")
                with open(script, "w") as f:
                    f.write(TIMM_SCRIPT.format(create=timm_create(args.arch, config), threads=counts[-1]))
                commands["PyTorch"] = [sys.executable, script, photo, weights]
            env_threads = str(counts[-1])
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                os.environ[var] = env_threads  # the numpy-mixer process: as many threads as the last table
            for argv_ in commands.values():  # once untimed: the file into the page cache, .pyc written
                measure_process(argv_)
            runs = {name: [] for name in commands}
            for _ in range(max(1, min(args.repeats, 3))):
                for name, argv_ in commands.items():
                    runs[name].append(measure_process(argv_))
            cold = {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
                    for name, rs in runs.items()}
            names = list(cold)
            table = []
            for label, i, unit in [("cold start, 1 photo (s)", 0, "{:.2f}"), ("peak memory (MB)", 1, "{:.0f}")]:
                row = [label] + [unit.format(cold[n][i]) for n in names]
                row += [f"{cold['numpy_mixer'][i] / cold[n][i]:.2f}x" for n in names[1:]]
                table.append(row)
            print(f"\nthe whole process on {counts[-1]} thread{'s' if counts[-1] > 1 else ''} (numpy-mixer predict "
                  "against the same job in timm: start, load, read, classify; peak memory summed over processes)")
            print(fmt_table(["whole process", *names] + [f"numpy_mixer / {n}" for n in names[1:]], table,
                            args.markdown))
    print(f"\nload average at the end {load_average()}")
    return 0


def json_path_problem(path):
    """Why --json PATH cannot be written ("is a folder", "is not a regular file", "no such folder", "its folder is
    not writable"), or None (also for no PATH): checked before a run, not after it. The file is written whole
    and renamed into place (write_json), which would replace a FIFO or device of that name: refused."""
    if not path:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "is a folder"
    if os.path.exists(path) and not os.path.isfile(path):
        return "is not a regular file"
    if not os.path.isdir(folder):
        return "no such folder"
    if not os.access(folder, os.W_OK):
        return "its folder is not writable"
    return None


def write_json(path, rows):
    """rows into path as JSON, whole or not at all (a run stopped mid-write leaves the last whole file)."""
    with open(f"{path}.partial", "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(f"{path}.partial", path)


def load_average():
    """The 1-minute load average, as text ("?" where the system has none)."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


def print_speed_table(threads, names, speed, ceiling, flops, batch_sizes, markdown):
    """One thread count's table: img/s of each framework (% of the matmul ceiling) and the ratios."""
    print(f"\n{threads} thread{'s' if threads > 1 else ''}: matmul ceiling {ceiling:.0f} GFLOP/s = "
          f"{ceiling * 1e9 / flops:.2f} img/s (2048^2 float32 matmul, {threads} BLAS "
          f"thread{'s' if threads > 1 else ''})")
    header = ["", *names] + [f"numpy_mixer / {n}" for n in names[1:]]
    table = []
    for B in batch_sizes:
        row = [f"batch {B}: img/s (% ceiling)"]
        for n in names:
            ips = speed[B][n]
            row.append(f"{ips:.2f} ({100 * ips * flops / 1e9 / ceiling:.0f}%)")
        row += [f"{speed[B]['numpy_mixer'] / speed[B][n]:.2f}x" for n in names[1:]]
        table.append(row)
    print(fmt_table(header, table, markdown), flush=True)


if __name__ == "__main__":
    sys.exit(main())

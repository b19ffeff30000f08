"""numpy_mixer against PyTorch (timm, eager) and ONNX Runtime on this CPU: one table.

    python benchmarks/bench.py                 # mixer_b16_224, batches 1, 8, 32, 5 repeats
    python benchmarks/bench.py --tiny          # a few-block mixer_s32 in under a minute (CI)
    python benchmarks/bench.py --markdown      # the table as markdown, for the README

Throughput is images per second, the median of --repeats timed forward passes per framework,
taken in turns (numpy, torch, onnxruntime, numpy, ...) so a busy machine slows all alike. Each timed
pass starts after a short pause, so that threads the framework before it left spinning (OpenMP's,
ONNX Runtime's pool) are asleep again and do not take a core from it.
"% roofline" divides the model's FLOPs per second (2 x its multiply-adds, counted from the config)
by what one large float32 NumPy matmul reaches in the same run. Cold start is the wall time of a
whole fresh process that classifies one photo from a local safetensors file (the numpy-mixer
command, and the equivalent timm script); peak memory is that process's maximum resident set.
Weights are random (numpy_mixer.checkpoint): the real ones cannot be downloaded here, and speed
does not depend on the values. torch, timm, onnx and onnxruntime are optional.
"""
import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from numpy_mixer.checkpoint import config_for, random_state_dict, save_checkpoint
from numpy_mixer.model import MlpMixer

THREADS = 2
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

# run a command in a fresh process; print its wall time and its peak resident set (kB on Linux)
MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.perf_counter() - start
print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode)
"""


def model_flops(config):
    """FLOPs of one image: 2 x the multiply-adds of the stem, the blocks and the head."""
    c = config
    N, C, T, H = c.num_patches, c.embed_dim, c.tokens_dim, c.channels_dim
    macs = N * C * c.in_chans * c.patch_size ** 2  # stem
    macs += c.depth * (2 * C * N * T + 2 * N * C * H)  # token MLP (fc1, fc2) + channel MLP (fc1, fc2)
    macs += C * c.num_classes  # head
    return 2 * macs


def matmul_gflops(n=2048, repeats=5):
    """GFLOP/s of an n x n float32 matmul, best of repeats: the roofline for the model's matmuls."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, n, n), dtype=np.float32)
    out = a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times) / 1e9


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
    torch.set_num_threads(THREADS)
    model = eval(timm_create(arch, config), {"timm": timm, "state": state})
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    model.eval()

    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run, model


def onnx_runner(model, img_size, folder):
    """A function running the timm model exported to ONNX in onnxruntime, or None without them."""
    torch, ort = optional("torch"), optional("onnxruntime")
    if model is None or ort is None or optional("onnx") is None:
        return None
    path = os.path.join(folder, "model.onnx")
    dummy = torch.zeros(1, 3, img_size, img_size)
    export_args = dict(input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "B"}, "logits": {0: "B"}})
    try:
        torch.onnx.export(model, (dummy,), path, dynamo=False, **export_args)
    except Exception:  # a torch without the TorchScript exporter: the dynamo one
        torch.onnx.export(model, (dummy,), path, dynamo=True, **export_args)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def measure_process(argv):
    """(wall seconds, peak RSS in MB) of one fresh process running argv."""
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
    return ", ".join(f"{i['internal_api']} {i['version']} ({i.get('architecture')} kernel, {i['num_threads']} threads)"
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
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per framework and batch size (default 5)")
    parser.add_argument("--tiny", action="store_true", help="a 2-block mixer_s32_224, batches 1 and 2, 1 repeat (CI)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the whole-process measurements")
    args = parser.parse_args(argv)
    changes = {}
    if args.tiny:
        args.arch, args.batch_sizes, args.repeats, changes = "mixer_s32_224", "1,2", 1, {"depth": 2}
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    config = config_for(args.arch, **changes)
    state = random_state_dict(config, seed=0)
    model = MlpMixer(state, source=args.arch)
    flops = model_flops(config)
    torch_run, torch_model = torch_runner(args.arch, state, config)
    rng = np.random.default_rng(0)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    with tempfile.TemporaryDirectory() as folder:
        ort_run = onnx_runner(torch_model, config.img_size, folder) if torch_run else None
        runners = {"numpy_mixer": lambda x: model(x)}
        if torch_run:
            runners["PyTorch"] = torch_run
        if ort_run:
            runners["ONNX Runtime"] = ort_run
        # numpy_mixer and the roofline get THREADS BLAS threads too (the fast path runs one worker per BLAS
        # thread), so the comparison is fair on machines with more cores
        threadpoolctl = optional("threadpoolctl")
        same_threads = threadpoolctl.threadpool_limits(THREADS, user_api="blas") if threadpoolctl else \
            contextlib.nullcontext()
        with same_threads:
            roofline = matmul_gflops()
            speed = {}
            for B in batch_sizes:
                x = rng.standard_normal((B, 3, config.img_size, config.img_size), dtype=np.float32)
                times = {name: [] for name in runners}
                for name, run in runners.items():  # warm up: first-call allocations, lazy init
                    run(x)
                for _ in range(args.repeats):
                    for name, run in runners.items():
                        time.sleep(PAUSE)
                        start = time.perf_counter()
                        run(x)
                        times[name].append(time.perf_counter() - start)
                speed[B] = {name: B / statistics.median(t) for name, t in times.items()}
            roofline = max(roofline, matmul_gflops())  # once before, once after: the better of the two

        cold = {}
        if not args.no_cold_start:
            from PIL import Image
            photo = os.path.join(folder, "photo.jpg")
            Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(photo, quality=90)
            weights = save_checkpoint(state, os.path.join(folder, "model.safetensors"))
            commands = {"numpy_mixer": numpy_mixer_command() + ["predict", photo, "--weights", weights]}
            if torch_run:
                script = os.path.join(folder, "timm_predict.py")
                with open(script, "w") as f:
                    f.write(TIMM_SCRIPT.format(create=timm_create(args.arch, config), threads=THREADS))
                commands["PyTorch"] = [sys.executable, script, photo, weights]
            for argv_ in commands.values():  # once untimed: the file into the page cache, .pyc written
                measure_process(argv_)
            runs = {name: [] for name in commands}
            for _ in range(max(1, min(args.repeats, 3))):
                for name, argv_ in commands.items():
                    runs[name].append(measure_process(argv_))
            cold = {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
                    for name, rs in runs.items()}
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    names = list(runners)
    header = ["", *names] + [f"numpy_mixer / {n}" for n in names[1:]]
    rows = []
    for B in batch_sizes:
        row = [f"batch {B}: img/s (% roofline)"]
        for n in names:
            ips = speed[B][n]
            row.append(f"{ips:.2f} ({100 * ips * flops / 1e9 / roofline:.0f}%)")
        row += [f"{speed[B]['numpy_mixer'] / speed[B][n]:.2f}x" for n in names[1:]]
        rows.append(row)
    if cold:
        for label, i, unit in [("cold start, 1 photo (s)", 0, "{:.2f}"), ("peak memory (MB)", 1, "{:.0f}")]:
            row = [label] + [unit.format(cold[n][i]) if n in cold else "-" for n in names]
            row += [f"{cold['numpy_mixer'][i] / cold[n][i]:.2f}x" if n in cold else "-" for n in names[1:]]
            rows.append(row)
    versions = [f"numpy {np.__version__}"]
    for mod in ("torch", "onnxruntime"):
        m = sys.modules.get(mod)
        if m is not None:
            versions.append(f"{mod} {m.__version__}")
    print(f"{args.arch}{' (2 blocks)' if args.tiny else ''}: {flops / 1e9:.2f} GFLOP/image; "
          f"roofline {roofline:.0f} GFLOP/s = {roofline * 1e9 / flops:.2f} img/s (2048^2 float32 matmul); "
          f"{os.cpu_count()} x {cpu_name()}; {blas_info()}; {', '.join(versions)}; "
          f"{THREADS} threads; load average {load_start:.1f} -> {load_end:.1f}")
    print(fmt_table(header, rows, args.markdown))
    if not torch_run:
        print("(torch/timm not installed: NumPy figures alone)")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"note: {var}={os.environ[var]} is set; it can slow OpenBLAS down")
    return 0


if __name__ == "__main__":
    sys.exit(main())

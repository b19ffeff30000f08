"""Variants of numpy_mixer side by side, in turns, each in a process of its own: an A/B.

    python benchmarks/ab.py base=. one=.:NUMPY_MIXER_TASKS_PER_WORKER=1 torch
    python benchmarks/ab.py --threads 16 --batch-sizes 1,8,32 --rounds 3 new=. old=../mixer-old torch
    python benchmarks/ab.py --tiny base=. w1=.:threads=1        # a 2-block mixer_s32_224 (CI)

A VARIANT is NAME=TREE[:SETTING,SETTING...], or the word torch (timm, eager, on the same weights):
- TREE: a folder holding the numpy_mixer package to time: `.`, the current folder (run ab.py from the checkout),
  or a git worktree for another commit (`git worktree add ../mixer-old HEAD~3`); a path with ':' in it cannot
  be named. Its process imports numpy_mixer from TREE first, and so do
  its worker processes (they take the caller's import path); a variant whose numpy_mixer comes from elsewhere
  is reported as failed, never timed as if it were the one named.
- SETTING: ENV=VALUE, an environment variable for that process only (NUMPY_MIXER_TASKS_PER_WORKER=1,
  NUMPY_MIXER_WORKERS=threads, ...; a value cannot hold ','), or threads=N, its own thread count instead of
  --threads (the table's header then names it).

Every variant runs ROUNDS times, in turns (a, b, c, a, b, c, ...), each time in a fresh process, so that a
busy spell or a slowing machine hits all alike. In each, every batch size gets two warm-up passes, then
--repeats timed passes, each after a pause (0.05 s; numpy_mixer's worker processes, torch's OpenMP threads
go back to sleep). The table gives img/s from the median pass over all rounds, and each variant's ratio to
the first one. Timings drift between minutes on shared machines: only ratios within one run mean anything.
--json FILE writes the rows: {variant, threads, batch, img_s, ratio (to the first variant), passes}.
Exit status: 0, 1 if a variant failed (the others are still timed), 2 for bad arguments, 143 when stopped by
SIGTERM (`timeout`; it prints the table of the passes timed so far first).
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
PAUSE = 0.05  # seconds before each pass


class BadVariant(Exception):
    pass


class Stopped(Exception):
    """SIGTERM (`timeout`, benchmarks/manycore.sh): stop timing, print what was measured."""


def _stop(*_):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # `timeout` may signal the whole group again: once is enough
    raise Stopped()


def parse_variant(spec):
    """(name, tree or None for torch, {env: value}, threads or None) of one VARIANT argument."""
    if spec == "torch":
        return "torch", None, {}, None
    name, eq, rest = spec.partition("=")
    if not eq or not NAME.match(name) or name == "torch":
        raise BadVariant(f"variant {spec!r}: write NAME=TREE[:SETTING,...] (NAME in letters, digits, '_.-', "
                         "not 'torch'), or torch")
    tree, _, settings = rest.partition(":")
    tree = os.path.abspath(tree or ".")
    if not os.path.isfile(os.path.join(tree, "numpy_mixer", "__init__.py")):
        raise BadVariant(f"variant {name}: {tree} holds no numpy_mixer package (no numpy_mixer/__init__.py); "
                         "name a checkout or a git worktree")
    env, threads = {}, None
    for setting in filter(None, settings.split(",")):
        key, eq, value = setting.partition("=")
        if key == "threads":
            if not value.isdecimal() or int(value) < 1:
                raise BadVariant(f"variant {name}: threads={value!r} is not a whole number from 1")
            threads = int(value)
        elif eq and ENV_NAME.match(key):
            env[key] = value
        else:
            raise BadVariant(f"variant {name}: setting {setting!r} is neither ENV=VALUE nor threads=N")
    return name, tree, env, threads


def time_passes(run, batch_sizes, repeats, img_size):
    """{batch: [seconds of each timed pass]} of run(x) on random images."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for B in batch_sizes:
        x = rng.standard_normal((B, 3, img_size, img_size), dtype=np.float32)
        for _ in range(2):
            run(x)
        seconds = []
        for _ in range(repeats):
            time.sleep(PAUSE)
            start = time.perf_counter()
            run(x)
            seconds.append(time.perf_counter() - start)
        out[B] = seconds
    return out


def one(args):
    """In a variant's own process: time it, print one line of JSON."""
    tree = None if args.one == "torch" else args.one
    sys.path.insert(0, tree or REPO)
    import threadpoolctl

    threadpoolctl.threadpool_limits(args.one_threads, user_api="blas")
    import numpy_mixer
    from numpy_mixer.checkpoint import config_for

    config = config_for(args.arch, **json.loads(args.changes))
    if tree is None:
        from safetensors.numpy import load_file
        import torch

        sys.path.insert(0, HERE)
        import bench

        torch.set_num_threads(args.one_threads)
        run, _ = bench.torch_runner(args.arch, load_file(args.weights), config)
        if run is None:
            raise SystemExit("torch or timm is not installed")
    else:
        from numpy_mixer.model import load_model

        run = load_model(args.weights)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]  # checked by the calling ab.py
    times = time_passes(run, batch_sizes, args.repeats, config.img_size)
    print(json.dumps({"module": os.path.dirname(os.path.abspath(numpy_mixer.__file__)), "times": times}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("variants", nargs="*", metavar="VARIANT")
    parser.add_argument("--arch", default="mixer_b16_224", help="timm architecture (default mixer_b16_224)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="each variant's thread count "
                        "(default: all cores)")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated (default 1,8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per batch size and round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of all the variants (default 3)")
    parser.add_argument("--seconds", type=float, default=1800,
                        help="start no round that would end past this many seconds (default 1800)")
    parser.add_argument("--tiny", action="store_true", help="a 2-block mixer_s32_224, batches 1 and 2 (CI)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to FILE as JSON")
    for hidden in ("--one", "--weights", "--changes"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--one-threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        one(args)
        return 0
    start = time.perf_counter()
    sys.path[:0] = [REPO, HERE]
    import bench
    from numpy_mixer.weights import ARCHITECTURES

    changes = {}
    if args.tiny:
        args.arch, args.batch_sizes, changes = "mixer_s32_224", "1,2", {"depth": 2}
    try:
        try:
            batch_sizes = bench.positive_ints(args.batch_sizes, "--batch-sizes")
        except SystemExit as e:  # bench.py's one line, for ab.py's exit status
            raise BadVariant(str(e)) from None
        for option in ("threads", "repeats", "rounds"):
            if getattr(args, option) < 1:
                raise BadVariant(f"--{option} {getattr(args, option)}: give a whole number from 1")
        if not args.seconds > 0 or args.seconds == float("inf"):
            raise BadVariant(f"--seconds {args.seconds}: give a number of seconds above 0")
        if args.arch not in ARCHITECTURES:
            raise BadVariant(f"--arch {args.arch!r} is not a Mixer timm ships; one of: {', '.join(ARCHITECTURES)}")
        variants = [parse_variant(v) for v in args.variants]
        if not variants:
            raise BadVariant("name at least one VARIANT, e.g. base=. (see --help)")
        names = [v[0] for v in variants]
        if len(set(names)) < len(names):
            raise BadVariant(f"variant names must differ: {', '.join(names)}")
        why = bench.json_path_problem(args.json)
        if why:
            raise BadVariant(f"--json {args.json}: {why}; name a file in a folder you can write")
    except BadVariant as e:
        print(f"ab.py: {e}", file=sys.stderr)
        return 2

    from numpy_mixer.checkpoint import config_for, random_state_dict, save_checkpoint

    times = {}  # (name, batch) -> [seconds]
    failed = {}
    stopped = False
    signal.signal(signal.SIGTERM, _stop)
    try:
        with tempfile.TemporaryDirectory() as folder:
            weights = save_checkpoint(random_state_dict(config_for(args.arch, **changes), seed=0),
                                      os.path.join(folder, args.arch + ".safetensors"))
            common = [sys.executable, os.path.abspath(__file__), "--weights", weights, "--arch", args.arch,
                      "--changes", json.dumps(changes), "--batch-sizes", ",".join(map(str, batch_sizes)),
                      "--repeats", str(args.repeats)]
            for r in range(args.rounds):
                for name, tree, env, threads in variants:
                    if name not in failed:
                        command = common + ["--one", tree or "torch", "--one-threads", str(threads or args.threads)]
                        left = max(60.0, args.seconds - (time.perf_counter() - start))
                        why = time_variant(command, env, folder, left, tree, times, name)
                        if why:
                            failed[name] = why
                elapsed = time.perf_counter() - start
                print(f"round {r + 1} of {args.rounds} done after {elapsed:.0f} s", file=sys.stderr, flush=True)
                if elapsed * (r + 2) / (r + 1) > args.seconds:
                    break
    except Stopped:  # the time is up: the table of what was measured so far
        stopped = True
        print("stopped (SIGTERM): the table holds the passes timed so far", file=sys.stderr)
    for name, why in failed.items():
        print(f"{name} failed: {why}", file=sys.stderr)
    rows = print_table(args, variants, batch_sizes, times)
    if args.json:
        try:
            bench.write_json(args.json, rows)
        except OSError as e:
            print(f"ab.py: cannot write --json {args.json}: {e.strerror or e}", file=sys.stderr)
            return 1
    return 143 if stopped else 1 if failed else 0


def time_variant(command, env, folder, timeout, tree, times, name):
    """One round of one variant: command (ab.py --one ...) in a fresh process in folder, with env added, its
    pass times added to times[(name, batch)]. Returns why it failed, or None. tree: the variant's folder (None
    for torch), where its numpy_mixer must come from."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, timeout=timeout,
                              cwd=folder)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    result = json.loads(lines[-1])
    if tree is not None and os.path.dirname(result["module"]) != tree:
        return f"ran numpy_mixer from {result['module']}, not from {tree}"
    for B, seconds in result["times"].items():
        times.setdefault((name, int(B)), []).extend(seconds)
    return None


def print_table(args, variants, batch_sizes, times):
    """Print img/s per batch size and variant (the ratio to the first one in brackets); returns the JSON rows."""
    names = [v[0] for v in variants]
    base = names[0]
    rows = []
    sep = " | " if args.markdown else "  "
    header = ["threads", "batch"] + [name + (f" ({threads} thread{'s' * (threads > 1)})" if threads else "")
                                     for name, _, _, threads in variants]
    print(("| " + sep.join(header) + " |\n|" + "---|" * 2 + "---:|" * len(names)) if args.markdown
          else sep.join(f"{h:>14}" for h in header))
    for B in batch_sizes:
        speed = {n: B / statistics.median(times[(n, B)]) for n in names if (n, B) in times}
        cells = []
        for name, _, _, threads in variants:
            if name not in speed:
                cells.append("-")
                continue
            ratio = speed[name] / speed[base] if base in speed else None
            cells.append(f"{speed[name]:.2f}" + (f" ({ratio:.3f})" if ratio is not None and name != base else ""))
            rows.append(dict(variant=name, threads=threads or args.threads, batch=B, img_s=round(speed[name], 3),
                             ratio=None if ratio is None else round(ratio, 4), passes=len(times[(name, B)])))
        line = [str(args.threads), str(B)] + cells
        print(("| " + sep.join(line) + " |") if args.markdown else sep.join(f"{c:>14}" for c in line))
    return rows


if __name__ == "__main__":
    sys.exit(main())

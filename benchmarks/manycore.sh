#!/usr/bin/env bash
# The many-core measurement, as one prepared run (a lent machine gives minutes, not hours):
#
#     bash benchmarks/manycore.sh OUT_FOLDER [THREADS] [SECONDS]     # defaults: 16,4 and 540
#
# PYTHON names the interpreter (default python3). First, the machine (nproc, lscpu): OUT_FOLDER/machine.txt.
# 0. if AB is set (space-separated VARIANTs of benchmarks/ab.py, e.g. AB="one=.:NUMPY_MIXER_TASKS_PER_WORKER=1
#    old=../mixer-old"), an A/B of this checkout ("base=.") against them and PyTorch on the first (largest) of
#    THREADS, batches 1, 8 and 32, in turns, for at most a third of SECONDS: OUT_FOLDER/ab.md and
#    OUT_FOLDER/ab.json (it runs just before the benchmark, and the machine's load average shows it there);
# 1. the scaling benchmark on THREADS (numpy_mixer on processes and on threads, PyTorch, ONNX Runtime):
#    OUT_FOLDER/bench.md and OUT_FOLDER/manycore.json (copy it to benchmarks/results/NAME.json for the
#    README and notebook 5);
# 2. with the time left, the profile of real passes on the largest thread count (where a pass goes:
#    outside, critical by phase, sync, imbalance, contention): OUT_FOLDER/profile.md;
# 3. the same profile with one task per worker process (NUMPY_MIXER_TASKS_PER_WORKER=1: the largest tiles, one
#    round of them; numpy_mixer gives two each from 4 workers on, which the task queue hands to whichever worker
#    is free: how much of the imbalance does that take back, and what do the smaller tiles cost?):
#    OUT_FOLDER/profile1.md;
# 4. then the kernels on one thread, NumPy against PyTorch: OUT_FOLDER/kernels.md.
# The script runs from the repository's root: relative paths (OUT_FOLDER, AB's trees) are taken from there.
# Every step stops at the time left of SECONDS, so the whole run ends within it; a step cut short
# leaves what it printed so far. Needs numpy, threadpoolctl, torch, timm, onnxruntime (and onnx for the
# export); nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/manycore.sh OUT_FOLDER [THREADS] [SECONDS]}
threads=${2:-16,4}
budget=${3:-540}
[[ $threads =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "manycore.sh: THREADS is a list like 16,4, got '$threads'" >&2; exit 2; }
[[ $budget =~ ^[0-9]+$ ]] || { echo "manycore.sh: SECONDS is a whole number of seconds, got '$budget'" >&2; exit 2; }
why=$(mkdir -p "$out" 2>&1) || { echo "manycore.sh: cannot make OUT_FOLDER '$out' (${why#mkdir: })" >&2; exit 2; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }
step() {  # step NAME FILE ARGS...: bench.py ARGS (or, with SCRIPT set, that script), cut at the time left,
    local name=$1 file=$2 seconds  # output into FILE and here
    shift 2
    seconds=$(left)
    if [[ -n ${STEP_SECONDS:-} ]] && ((STEP_SECONDS < seconds)); then seconds=$STEP_SECONDS; fi
    if ((seconds < 20)); then
        echo "== $name: skipped, ${seconds} s left" | tee "$out/$file"
        return
    fi
    echo "== $name (at most ${seconds} s; load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null))"
    timeout "$seconds" "${PYTHON:-python3}" "${SCRIPT:-benchmarks/bench.py}" "$@" 2>&1 | tee "$out/$file"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}
echo "$(nproc) CPUs; $(uname -m)"
{
    nproc
    lscpu 2>/dev/null || sysctl -a 2>/dev/null | grep -i '^hw\.'
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
} > "$out/machine.txt" 2>&1
if [[ -n ${AB:-} ]]; then
    read -ra variants <<<"$AB"  # one word each, split on spaces, never glob-expanded
    rounds_end=$((budget / 3 > 16 ? budget / 3 - 15 : 1))  # ab.py's last round starts only if it ends by then
    SCRIPT=benchmarks/ab.py STEP_SECONDS=$((budget / 3)) step "A/B, ${threads%%,*} threads" ab.md \
        --threads "${threads%%,*}" --batch-sizes 1,8,32 --rounds 3 --seconds "$rounds_end" --markdown \
        --json "$out/ab.json" base=. "${variants[@]}" torch
fi
step "scaling benchmark, $threads threads" bench.md --threads "$threads" --repeats 5 --compare-threads \
    --markdown --json "$out/manycore.json"
step "profile, ${threads%%,*} threads" profile.md --profile --threads "${threads%%,*}" --batch-sizes 1,8,32 \
    --repeats 3 --markdown
NUMPY_MIXER_TASKS_PER_WORKER=1 step "profile, ${threads%%,*} threads, one task per worker process" profile1.md \
    --profile --threads "${threads%%,*}" --batch-sizes 1,8,32 --repeats 3 --markdown
step "kernels, 1 thread" kernels.md --kernels --batch-sizes 1,32 --markdown

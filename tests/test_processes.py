"""The fast path's worker processes (numpy_mixer.processes): same bits as one thread, weights shared
not copied, never stale, and every failure one line, with no process or shared file left behind."""
import collections
import glob
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from numpy_mixer import fast, processes
from numpy_mixer.checkpoint import config_for, random_state_dict, save_checkpoint
from numpy_mixer.errors import MixerError
from numpy_mixer.model import MlpMixer, load_model

P = 32


@pytest.fixture(autouse=True)
def process_mode(monkeypatch):
    monkeypatch.setenv("NUMPY_MIXER_WORKERS", "processes")
    yield
    processes.discard()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("processes") / "s32-2.safetensors"
    save_checkpoint(random_state_dict(config_for("mixer_s32_224", depth=2), seed=5), path)
    return path


def images(batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, 224, 224), dtype=np.float32)


def shared_files():
    return {f for folder in processes._shared_folders() for f in glob.glob(os.path.join(folder, "numpy-mixer-*"))}


def test_processes_are_the_default_on_x86_64(monkeypatch):
    monkeypatch.delenv("NUMPY_MIXER_WORKERS")
    monkeypatch.setattr(processes.platform, "machine", lambda: "x86_64")
    assert processes.supported()
    monkeypatch.setattr(processes.platform, "machine", lambda: "arm64")  # no x86 store order: threads
    assert not processes.supported()
    monkeypatch.setenv("NUMPY_MIXER_WORKERS", "threads")
    monkeypatch.setattr(processes.platform, "machine", lambda: "x86_64")
    assert not processes.supported()
    monkeypatch.setenv("NUMPY_MIXER_WORKERS", "proceses")  # a typo is an error, not a silent default
    with pytest.raises(processes.MixerError, match="NUMPY_MIXER_WORKERS='proceses' is not a choice"):
        processes.supported()


def test_mapped_weights_are_mapped_again_not_copied(model_file):
    model = load_model(str(model_file))
    x = images(3)
    reference = fast.forward_features(x, model.params, P, workers=1)
    before = shared_files()
    tokens = fast.forward_features(x, model.params, P, workers=3)
    np.testing.assert_array_equal(tokens, reference)
    assert tokens.std() > 0.5  # real spread, not a constant
    pool = processes._pool
    assert pool is not None and len(pool.procs) == 2 and pool.weights_file is None  # no shared copy
    leaves, shared, copies = processes.describe_weights(model.params)
    assert shared is None and not copies and all(spec[0] == "file" for _, spec in leaves)
    assert shared_files() <= before  # every shared file is unlinked once mapped


def test_weights_changed_in_place_are_never_stale():
    """Weights held in memory (training, say) are copied to the workers before every pass."""
    model = MlpMixer(random_state_dict(config_for("mixer_s32_224", depth=2), seed=6))
    x = images(2)
    first = fast.forward_features(x, model.params, P, workers=2)
    model.params["blocks"][1]["mlp_channels"]["fc2"]["weight"] *= np.float32(1.5)  # in place, as an optimiser
    model.params["blocks"][0]["norm1"]["bias"] += np.float32(0.25)
    second = fast.forward_features(x, model.params, P, workers=2)
    assert np.abs(second - first).max() > 1e-2
    np.testing.assert_array_equal(second, fast.forward_features(x, model.params, P, workers=1))
    model.params["blocks"][0]["norm2"]["weight"] = model.params["blocks"][0]["norm2"]["weight"] * 2  # a new leaf
    np.testing.assert_array_equal(fast.forward_features(x, model.params, P, workers=2),
                                  fast.forward_features(x, model.params, P, workers=1))


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_weights_are_copied_whole_on_any_number_of_threads(threads, monkeypatch):
    """refresh_copies shares the leaves out over threads: every value lands where build_params reads it,
    a non-contiguous leaf included, and a second refresh brings in-place changes."""
    monkeypatch.setattr(processes, "COPY_THREADS_FROM", 1)  # the threads even for these small arrays
    rng = np.random.default_rng(threads)
    arrays = [rng.standard_normal(shape, dtype=np.float32) for shape in [(7, 5), (300,), (16, 16), (1,), (33, 9)]]
    arrays.append(rng.standard_normal((12, 10), dtype=np.float32)[:, ::2])  # a strided view
    params = {"leaf": {str(i): a for i, a in enumerate(arrays)}}
    leaves, shared, placed = processes.describe_weights(params, threads)
    try:
        rebuilt = processes.build_params(leaves, shared.path)["leaf"]
        for i, a in enumerate(arrays):
            np.testing.assert_array_equal(rebuilt[str(i)], a)
        for a in arrays:
            a *= np.float32(-2)  # in place
        processes.refresh_copies(shared, placed, threads)
        for i, a in enumerate(arrays):
            np.testing.assert_array_equal(rebuilt[str(i)], a)
    finally:
        shared.unlink()


def test_a_worker_that_dies_gives_one_line_and_the_next_call_works(model_file):
    model = load_model(str(model_file))
    x = images(2)
    reference = fast.forward_features(x, model.params, P, workers=1)
    fast.forward_features(x, model.params, P, workers=3)
    victim = processes._pool.procs[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    with pytest.raises(processes.WorkerError) as e:
        processes._pool.run({}, lambda barrier: barrier.wait(), [])
    assert "\n" not in str(e.value) and "worker process 1" in str(e.value) and "exit" in str(e.value)
    np.testing.assert_array_equal(fast.forward_features(x, model.params, P, workers=3), reference)  # a new pool


def test_a_worker_killed_mid_pass_stops_it_with_one_line(model_file, monkeypatch):
    model = load_model(str(model_file))
    x = images(2)
    fast.forward_features(x, model.params, P, workers=2)
    victim = processes._pool.procs[0]
    real = fast.run_phases

    def kill_then_run(*args):  # worker 0 kills worker 1, then waits for it
        victim.send_signal(signal.SIGKILL)
        return real(*args)

    monkeypatch.setattr(fast, "run_phases", kill_then_run)
    start = time.monotonic()
    with pytest.raises(processes.WorkerError, match="died with exit code"):
        fast.forward_features(x, model.params, P, workers=2)
    assert time.monotonic() - start < 30
    assert processes._pool is None  # discarded: the next call starts afresh


def test_a_weights_file_replaced_under_the_model_is_refused(model_file, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(model_file.read_bytes())
    model = load_model(str(path))
    x = images(1)
    processes.discard()
    other = tmp_path / "other.safetensors"
    save_checkpoint(random_state_dict(config_for("mixer_s32_224", depth=2), seed=7), other)
    os.replace(other, path)  # another file under the loaded one's name (the model keeps its map of the old)
    with pytest.raises(processes.WorkerError) as e:
        fast.forward_features(x, model.params, P, workers=2)
    message = str(e.value)
    assert "\n" not in message and str(path) in message and "changed since it was loaded" in message


def test_workers_leave_with_the_calling_process(model_file):
    """A script that exits (here, without closing anything) leaves no worker and no shared file behind."""
    script = textwrap.dedent(f"""
        import numpy as np
        from numpy_mixer import fast, processes
        from numpy_mixer.model import load_model
        model = load_model({str(model_file)!r})
        fast.forward_features(np.ones((1, 3, 224, 224), np.float32), model.params, {P}, workers=3)
        print(" ".join(str(p.pid) for p in processes._pool.procs), flush=True)
    """)
    before = shared_files()
    env = dict(os.environ, NUMPY_MIXER_WORKERS="processes",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(fast.__file__))))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in pids):
        time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
    assert shared_files() <= before


def test_the_barrier_aborts_every_waiter():
    control = np.zeros(4 * processes.FLAG_STRIDE, np.int64)
    first, second = processes.FlagBarrier(control, 0, 3), processes.FlagBarrier(control, 1, 3)
    first.abort()
    with pytest.raises(processes.Aborted):
        second.wait()


def test_a_full_shared_memory_folder_is_passed_over(monkeypatch, tmp_path):
    """posix_fallocate refusing the space (a small /dev/shm) sends the file to the next folder."""
    full, spare = tmp_path / "full", tmp_path / "spare"
    full.mkdir()
    spare.mkdir()
    monkeypatch.setattr(processes, "_shared_folders", lambda: [str(full), str(spare)])
    real = os.posix_fallocate

    def fallocate(fd, offset, length):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(full)):
            raise OSError(28, "No space left on device")
        return real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    shared = processes.SharedFile(1 << 20)
    assert shared.path.startswith(str(spare)) and not list(full.iterdir())
    shared.unlink()
    monkeypatch.setattr(processes, "_shared_folders", lambda: [str(full), str(tmp_path / "missing")])
    with pytest.raises(processes.MixerError) as e:
        processes.SharedFile(1 << 20)
    message = str(e.value)
    assert "\n" not in message and "No space left" in message and "NUMPY_MIXER_WORKERS=threads" in message
    assert "missing: No such file or directory" in message


@pytest.mark.parametrize("closed", [0, 1, 2], ids=["stdin", "stdout", "stderr"])
def test_workers_start_with_stdin_stdout_or_stderr_closed(closed):
    """With fd 0, 1 or 2 closed (`<&-`, `>&-`, `2>&-`), os.pipe() hands it out; a worker's end of its pipe
    there was overwritten by its own stdin/stdout/stderr (/dev/null), and the worker died."""
    script = textwrap.dedent(f"""
        import os
        os.close({closed})
        import sys
        import numpy as np
        from numpy_mixer import fast, processes
        from numpy_mixer.model import load_model
        model = load_model("digits")
        S, P = model.config.img_size, model.config.patch_size
        x = np.random.default_rng(0).random((1, 3, S, S), dtype=np.float32)
        two = fast.forward_features(x, model.params, P, workers=2)
        assert len(processes._pool.procs) == 1, "no worker process"
        logits = model(x)  # the model's own call, on the OPENBLAS_NUM_THREADS=2 workers
        assert np.array_equal(two, fast.forward_features(x, model.params, P, workers=1)), "two workers differ"
        assert np.array_equal(logits, model.forward_head(two)), "the model's call differs"
        assert two.std() > 0.1, "a constant"
        os.write(1 if {closed} == 2 else 2, b"same")
    """)
    env = dict(os.environ, NUMPY_MIXER_WORKERS="processes", OPENBLAS_NUM_THREADS="2",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(fast.__file__))))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout + out.stderr == "same", out.stdout + out.stderr


def test_a_worker_that_cannot_start_leaves_no_descriptor_open(monkeypatch):
    """Popen or the second pipe failing (no memory, no descriptors left) is a clean error: every pipe end
    opened for that worker is closed."""
    def fails(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    real_pipe, pipes = os.pipe, []

    def nth_pipe_fails():  # the task queue's, then worker 1's down and up pipes, then worker 2's
        pipes.append(1)
        if len(pipes) == failing:
            raise OSError(24, "Too many open files")
        return real_pipe()

    processes.discard()
    before = set(os.listdir("/proc/self/fd"))
    with monkeypatch.context() as patch:
        patch.setattr(processes.subprocess, "Popen", fails)
        with pytest.raises(OSError, match="Cannot allocate memory"):
            processes.Pool(3)
    assert set(os.listdir("/proc/self/fd")) == before
    for failing in range(1, 6):
        pipes.clear()
        with monkeypatch.context() as patch:
            patch.setattr(processes.os, "pipe", nth_pipe_fails)
            with pytest.raises(OSError, match="Too many open files"):
                processes.Pool(3)
        assert set(os.listdir("/proc/self/fd")) == before, failing


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(0, 300), max_size=12), W=st.integers(1, 6))
@example(counts=[3000, 5, 0, 40], W=3)  # 6 KB of tokens: the writer thread writes the part past 4 KB
def test_the_task_queue_hands_each_task_to_one_worker_phase_by_phase(counts, W):
    """W readers, a barrier between phases as in a pass: each phase's tasks are taken exactly once, none
    of them after the barrier, and the pipe is empty at the end (the next pass starts clean). Passes of
    more than 4 KB of tokens (the writer thread) included."""
    queue = processes.TaskQueue(W)
    try:
        taken = collections.defaultdict(list)  # phase -> task indices, from every reader
        barrier = threading.Barrier(W, timeout=30)  # a reader that fails breaks it: no hang

        def reader():
            for phase, n in enumerate(counts):
                taken[phase].extend(processes.take(queue.read_fd, list(range(n))))
                barrier.wait()

        for _ in range(2):  # two passes through the same queue
            taken.clear()
            threads = [threading.Thread(target=reader) for _ in range(W - 1)]
            for t in threads:
                t.start()
            queue.put(counts)
            reader()
            for t in threads:
                t.join(timeout=30)
                assert not t.is_alive()
            assert [sorted(taken[p]) for p in range(len(counts))] == [list(range(n)) for n in counts]
            os.set_blocking(queue.read_fd, False)
            with pytest.raises(BlockingIOError):
                os.read(queue.read_fd, 1)
            os.set_blocking(queue.read_fd, True)
    finally:
        queue.close()


def test_a_slow_worker_process_takes_fewer_tasks_and_the_bits_stay(model_file, monkeypatch):
    """Worker processes take tasks as they come: this process (worker 0), slowed down, takes fewer tiles
    than an even share, and the result does not move."""
    model = load_model(str(model_file))
    x = images(3)
    reference = fast.forward_features(x, model.params, P, workers=1)
    monkeypatch.setattr(fast, "_uneven", True)  # two tasks per worker: something to take over
    taken = collections.Counter()
    fc1 = fast.channel_fc1_tile

    def slowed(*args):
        taken["main"] += 1
        time.sleep(0.02)
        return fc1(*args)

    monkeypatch.setattr(fast, "channel_fc1_tile", slowed)
    _, record = fast.time_tasks(x, model.params, P, 2, fast.UNEVEN_TASKS_PER_WORKER)
    tasks = sum(len(seconds) for name, seconds in record if name == "fc1")  # fc1 tiles in one pass
    taken.clear()
    np.testing.assert_array_equal(fast.forward_features(x, model.params, P, workers=2), reference)
    assert tasks >= 4 * len(model.params["blocks"]) and taken["main"] < tasks / 2, (taken, tasks)


def test_cores_that_differ_in_speed_are_told_apart(tmp_path):
    def sysfs(name, clocks=None, capacities=None, kinds=None):
        root = tmp_path / name
        for cpu, value in enumerate(clocks or []):
            (root / "system" / "cpu" / f"cpu{cpu}" / "cpufreq").mkdir(parents=True, exist_ok=True)
            (root / "system" / "cpu" / f"cpu{cpu}" / "cpufreq" / "cpuinfo_max_freq").write_text(f"{value}\n")
        for cpu, value in enumerate(capacities or []):
            (root / "system" / "cpu" / f"cpu{cpu}").mkdir(parents=True, exist_ok=True)
            (root / "system" / "cpu" / f"cpu{cpu}" / "cpu_capacity").write_text(f"{value}\n")
        for kind, cpus in (kinds or {}).items():
            (root / kind).mkdir(parents=True)
            (root / kind / "cpus").write_text(cpus + "\n")
        return str(root)

    four = range(4)
    assert processes.cores_differ(four, sysfs("hybrid", clocks=[5000000, 5000000, 3800000, 3800000]))
    assert processes.cores_differ(four, sysfs("arrow", clocks=[5200000, 5200000, 4600000, 4600000]))
    assert not processes.cores_differ(four, sysfs("favoured", clocks=[5200000, 5000000, 5000000, 5000000]))
    assert not processes.cores_differ(four, str(tmp_path / "nothing"))  # a VM, macOS: no sysfs
    # x86 kernels: the same capacity on every core of a hybrid chip with Hyper-Threading on; the clocks tell
    assert processes.cores_differ(four, sysfs("same-capacity", [5000000, 5000000, 3800000, 3800000], [1024] * 4))
    assert processes.cores_differ(four, sysfs("capacity", capacities=[1024, 1024, 512, 512]))
    assert not processes.cores_differ(four, sysfs("alike", [3000000] * 4, [1024] * 4))
    assert not processes.cores_differ([0, 1], sysfs("ours-alike", clocks=[5000000, 5000000, 3800000, 3800000]))
    # Intel's two kinds of core, listed by perf's PMUs: both among ours, or only one kind
    kinds = sysfs("pmu", kinds={"cpu_core": "0-1", "cpu_atom": "2-3,8"})
    assert processes.cores_differ(four, kinds) and not processes.cores_differ([2, 3], kinds)
    assert not processes.cores_differ([], kinds)
    assert processes._cpu_list(os.path.join(kinds, "cpu_atom", "cpus")) == {2, 3, 8}


def test_a_pass_cut_short_while_it_is_handed_out_stops_at_once(model_file, monkeypatch):
    """An interrupt after one worker got the pass and before the others did: the one that started stops at
    its first barrier (the abort flag), not after close()'s 2 s, and the next call works."""
    model = load_model(str(model_file))
    x = images(2)
    reference = fast.forward_features(x, model.params, P, workers=1)
    fast.forward_features(x, model.params, P, workers=4)
    pool = processes._pool
    real = pool._broadcast

    def one_then_interrupt(message):
        if message.get("op") != "run":
            return real(message)
        processes._send(pool.conns[0][1], message)  # worker 1 starts the pass ...
        raise KeyboardInterrupt  # ... and the others never hear of it

    monkeypatch.setattr(pool, "_broadcast", one_then_interrupt)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        fast.forward_features(x, model.params, P, workers=4)
    assert processes._pool is None and time.monotonic() - start < 1.5
    np.testing.assert_array_equal(fast.forward_features(x, model.params, P, workers=4), reference)


ENV_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.integers(-5, 40).map(str), ENV_TEXT))
def test_tasks_per_worker_set_by_hand_or_one_line(value):
    """NUMPY_MIXER_TASKS_PER_WORKER: a whole number from 1 to 16 is used as it is; anything else is one
    line naming the variable (blank: unset)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(fast.TASKS_ENV, value)
        text = value.strip()
        if not text:
            assert fast.process_tasks_per_worker(2) in (fast.PROCESS_TASKS_PER_WORKER, fast.UNEVEN_TASKS_PER_WORKER)
            assert fast.process_tasks_per_worker(16) in (fast.MANY_TASKS_PER_WORKER, fast.UNEVEN_TASKS_PER_WORKER)
        elif text.isdecimal() and 1 <= int(text) <= fast.MAX_TASKS_PER_WORKER:
            assert fast.process_tasks_per_worker(2) == fast.process_tasks_per_worker(16) == int(text)
        else:
            with pytest.raises(MixerError) as e:
                fast.process_tasks_per_worker(2)
            assert "\n" not in str(e.value) and fast.TASKS_ENV in str(e.value)


def test_tasks_per_worker_set_by_hand_gives_the_same_bits(model_file, monkeypatch):
    model = load_model(str(model_file))
    x = images(3)
    reference = fast.forward_features(x, model.params, P, workers=1)
    for n in ("1", "2", "5"):
        monkeypatch.setenv(fast.TASKS_ENV, n)
        np.testing.assert_array_equal(fast.forward_features(x, model.params, P, workers=3), reference)
    monkeypatch.setenv(fast.TASKS_ENV, "0")
    with pytest.raises(MixerError, match="NUMPY_MIXER_TASKS_PER_WORKER='0' is not a whole number from 1 to 16"):
        fast.forward_features(x, model.params, P, workers=3)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
@pytest.mark.parametrize("mode", ["processes", "threads"])
def test_a_forked_child_runs_its_own_workers(model_file, mode, monkeypatch):
    """multiprocessing forks on Linux: a child of a process whose workers are up gets its own (it neither
    drives the parent's helpers nor waits on worker threads that fork() left behind), and the parent's
    pool is untouched."""
    monkeypatch.setenv("NUMPY_MIXER_WORKERS", mode)
    model = load_model(str(model_file))
    x = images(2)
    reference = fast.forward_features(x, model.params, P, workers=1)
    np.testing.assert_array_equal(fast.forward_features(x, model.params, P, workers=3), reference)
    parent_pool = processes._pool
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one pass, its verdict through the pipe, then out without any cleanup
        code = 1
        try:
            os.close(read_end)
            ok = np.array_equal(fast.forward_features(x, model.params, P, workers=3), reference)
            own = mode == "threads" or processes._pool is not parent_pool
            os.write(write_end, b"1" if ok and own else b"0")
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 60)
        verdict = os.read(read_end, 1) if ready else b"(no answer in 60 s: a hang)"
    finally:
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
    assert verdict == b"1", verdict
    assert processes._pool is parent_pool
    if mode == "processes":  # the child closed nothing of the parent's: no abort flag in its shared control block
        assert parent_pool.control[parent_pool.W * processes.FLAG_STRIDE] == 0
    np.testing.assert_array_equal(fast.forward_features(x, model.params, P, workers=3), reference)


def test_helpers_run_this_numpy_mixer_whatever_the_current_folder(model_file, tmp_path, monkeypatch):
    """`python -c` puts the current folder first on the path: a numpy_mixer folder there (a checkout,
    another version) must not run in the helpers, whose plan would then differ from this process's."""
    fake = tmp_path / "numpy_mixer"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "processes.py").write_text("raise SystemExit('the numpy_mixer of the current folder ran')\n")
    model = load_model(model_file)
    x = np.random.default_rng(3).standard_normal((2, 3, 224, 224), dtype=np.float32)
    want = fast.forward_features(x, model.params, P, workers=1)
    monkeypatch.chdir(tmp_path)
    processes.discard()
    np.testing.assert_array_equal(fast.forward_features(x, model.params, P, workers=2), want)


def test_helpers_of_another_numpy_mixer_are_refused_in_one_line(model_file, tmp_path, monkeypatch):
    """Helpers that came up running another copy of numpy_mixer (a path set by hand, the package replaced on
    disk since this process imported it: another digest of its code) are refused when they say hello,
    before any pass: one line naming what differs."""
    import shutil
    copy = tmp_path / "numpy_mixer"
    shutil.copytree(os.path.dirname(processes.__file__), copy, ignore=shutil.ignore_patterns("data", "__pycache__"))
    started, popen = [], processes.subprocess.Popen
    monkeypatch.setattr(processes.subprocess, "Popen", lambda *a, **k: started.append(popen(*a, **k)) or started[-1])
    model = load_model(model_file)
    x = np.zeros((1, 3, 224, 224), np.float32)
    code = processes.helper_code
    for how in ("another copy", "replaced on disk"):
        with monkeypatch.context() as patch:
            if how == "another copy":  # the copy first on the helpers' path
                patch.setattr(processes, "helper_code", lambda *a: code(*a).replace(
                    "from numpy_mixer", f"sys.path.insert(0, {str(tmp_path)!r}); from numpy_mixer", 1))
            else:  # this process's digest as if the files had changed since it imported them
                patch.setitem(processes.FINGERPRINT, "code", "0" * 16)
            processes.discard()
            with pytest.raises(processes.WorkerError) as e:
                fast.forward_features(x, model.params, P, workers=2)
        message = str(e.value)
        assert "\n" not in message and "another numpy-mixer" in message, how
        assert (str(copy / "processes.py") in message) if how == "another copy" else ("0" * 16 in message)
        assert started[-1].wait(timeout=10) is not None  # and it is gone, not left running


def test_a_setting_changed_after_the_workers_started_is_one_line_not_wrong_tiles(model_file, monkeypatch):
    """The helpers plan each pass themselves: a plan setting changed in this process only (the helpers
    keep theirs) must stop the pass in one line, never mix two plans' tiles in the shared arrays. The
    hidden activations' layout travels with the pass, so changing its rule is fine."""
    model = load_model(model_file)
    x = np.random.default_rng(4).standard_normal((2, 3, 224, 224), dtype=np.float32)
    want = fast.forward_features(x, model.params, P, workers=1)
    np.testing.assert_array_equal(fast.forward_features(x, model.params, P, workers=2), want)  # workers up
    monkeypatch.setattr(fast, "HIDDEN_MAJOR_ROWS", 0)  # row-major here, the helpers still say hidden-major
    np.testing.assert_array_equal(fast.forward_features(x, model.params, P, workers=2), want)
    monkeypatch.setattr(fast, "NORM_ROWS", 16)  # more LayerNorm tiles here than in the helpers' plan
    with pytest.raises(processes.WorkerError) as e:
        fast.forward_features(x, model.params, P, workers=2)
    assert "\n" not in str(e.value) and "planned other tiles" in str(e.value)
    monkeypatch.undo()
    monkeypatch.setenv("NUMPY_MIXER_WORKERS", "processes")
    np.testing.assert_array_equal(fast.forward_features(x, model.params, P, workers=2), want)  # new workers


@settings(max_examples=40, deadline=None)
@given(value=st.one_of(st.sampled_from(["0", "1", " 1 ", "", "2", "yes"]), ENV_TEXT))
def test_pinning_set_by_hand_or_one_line(value):
    """NUMPY_MIXER_PIN: 1 pins (where the OS lets a process choose its cores), 0 or blank does not; anything
    else is one line naming the variable."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(processes.PIN_ENV, value)
        text = value.strip()
        if text in ("", "0"):
            assert processes.pinned_cores() is None
        elif text == "1":
            cores = processes.pinned_cores()
            assert cores is None if not hasattr(os, "sched_setaffinity") else cores == sorted(os.sched_getaffinity(0))
        else:
            with pytest.raises(MixerError) as e:
                processes.pinned_cores()
            assert "\n" not in str(e.value) and processes.PIN_ENV in str(e.value)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pinning needs Linux's sched_setaffinity")
def test_pinned_workers_each_have_a_core_and_the_same_bits(model_file, monkeypatch):
    """NUMPY_MIXER_PIN=1: helper i on core i (mod the cores), the calling thread on the first core for the pass
    only, the same bits; turning it on or off starts new workers."""
    model = load_model(str(model_file))
    x = images(3)
    reference = fast.forward_features(x, model.params, P, workers=1)
    before = os.sched_getaffinity(0)
    unpinned = processes.pool(3)
    monkeypatch.setenv(processes.PIN_ENV, "1")
    np.testing.assert_array_equal(fast.forward_features(x, model.params, P, workers=3), reference)
    pinned = processes.pool(3)
    assert pinned is not unpinned and pinned.cores == sorted(before)
    for rank, proc in enumerate(pinned.procs, 1):
        assert os.sched_getaffinity(proc.pid) == {pinned.cores[rank % len(pinned.cores)]}
    assert os.sched_getaffinity(0) == before  # the calling thread has its cores back
    monkeypatch.setenv(processes.PIN_ENV, "0")
    np.testing.assert_array_equal(fast.forward_features(x, model.params, P, workers=3), reference)
    assert processes.pool(3) is not pinned and processes.pool(3).cores is None

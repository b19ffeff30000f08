"""Worker processes for the fast path: fast.py's tasks on W-1 helper processes and this one.

Why processes: threads share one GIL, and every task is a chain of NumPy calls with Python between
them. Measured on a 16-core Xeon (benchmarks/README.md has the figures), GELU on
a [196, 3072] tile split over 16 threads took 3.9 ms, twice as long as on one thread (1.9 ms), and
0.21 ms over 16 processes; a threading.Barrier round of 16 threads took 836 us. Processes run their
Python side by side, and a barrier of flags in shared memory takes about 4 us.

How:
- the helpers are plain `python -c` processes (not multiprocessing's spawn, which re-runs the
  caller's script), started once, with single-threaded BLAS; they talk to this process over pipes in
  JSON (never pickle), and map the same memory:
  - the weights: a safetensors file's own map is mapped again from the file (the page cache is shared:
    no copy); weights held in memory are copied into a shared buffer before every pass;
  - the activations (fast._layout) and a control block (one barrier flag per worker, an abort flag),
    in files under /dev/shm (or the temp folder) that are deleted once every worker has them mapped.
- the workers take the tiles of each phase of fast.plan one by one, as they ask for them, from a
  pipe that all of them read (TaskQueue: a worker that falls behind takes fewer; the bits do not depend on
  who runs a tile), and wait at a flag barrier between phases: a waiting worker spins a few thousand
  checks, then yields its core (so that more workers than cores still finish).
- the barrier relies on x86's store order (a worker's results are visible before its flag); on other
  processors fast.py uses threads. NUMPY_MIXER_WORKERS=threads or =processes chooses by hand.
- the OS places the workers on cores; NUMPY_MIXER_PIN=1 (Linux) pins each to a core of its own (pinned_cores).
- a worker that fails or dies stops the pass with one line naming it; the pool is started afresh on
  the next call. Workers exit when this process does (their pipe closes). A child made by fork()
  forgets its parent's pool and starts its own (_forget_after_fork).
"""
import atexit
import hashlib
import json
import mmap
import os
import platform
import select
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

import numpy as np

from .errors import MixerError, first_line

SPIN_CHECKS = 3000  # flag checks (about 1 us each) before a waiting worker starts to yield its core
START_SECONDS = 60  # workers that have not said hello by then are given up on
FLAG_STRIDE = 16  # int64s between two workers' flags: one 128-byte line each, no false sharing
ENV = "NUMPY_MIXER_WORKERS"
PIN_ENV = "NUMPY_MIXER_PIN"  # 1: a core for each worker (Linux; for measuring); unset or 0: the OS places them
COPY_THREADS_FROM = 1 << 20  # weights held in memory are copied on several threads from this many floats (4 MB)
_yield_core = getattr(os, "sched_yield", lambda: time.sleep(0))  # let another runnable process have the core


class WorkerError(MixerError):
    """A worker process failed or died."""


def cores_differ(cpus=None, root="/sys/devices"):
    """Whether the cores this process may run on differ in speed: performance and efficiency cores
    (Intel's since 2021, AMD's compact ones, Arm's big.LITTLE). From Linux's sysfs, the first of:
    - Intel's hybrid chips list their two kinds of core in cpu_core/cpus and cpu_atom/cpus (perf's
      PMUs): cores of both kinds among ours;
    - the kernel's cpu_capacity, where it differs between our cores (x86 kernels give every core of a
      hybrid chip with Hyper-Threading on the same 1024: equal capacities say nothing);
    - each core's top clock (cpufreq's cpuinfo_max_freq), the fastest more than 1.10x the slowest (the
      favoured cores of one kind run about 5% faster; an Arrow Lake's efficiency cores 11-14% slower).
    False where none of these is there (macOS, most virtual machines). cpus: core numbers (default:
    this process's).
    """
    if cpus is None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cpus = set(cpus)
    kinds = [_cpu_list(os.path.join(root, kind, "cpus")) for kind in ("cpu_core", "cpu_atom")]
    if all(kind & cpus for kind in kinds):
        return True
    for name, factor in (("cpu_capacity", 1.0), (os.path.join("cpufreq", "cpuinfo_max_freq"), 1.10)):
        values = [_read_int(os.path.join(root, "system", "cpu", f"cpu{cpu}", name)) for cpu in sorted(cpus)]
        values = [v for v in values if v]  # a core without the file (offline, say) tells nothing
        if values and max(values) > factor * min(values):
            return True
    return False


def _read_int(path):
    """The whole number in a sysfs file, or None."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _cpu_list(path):
    """The core numbers of a sysfs list file ("0-7,16,18-19"), or an empty set."""
    try:
        with open(path) as f:
            text = f.read().strip()
        cpus = set()
        for part in filter(None, text.split(",")):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
        return cpus
    except (OSError, ValueError):
        return set()


def pinned_cores():
    """The cores the W workers are pinned to, worker i to cores[i % len(cores)]: this process's cores where
    NUMPY_MIXER_PIN=1 and the OS lets a process choose (Linux), else None (the OS places the workers).

    Off by default: whether it helps is not yet measured (on 16 cores, the same workers were the slowest phase
    after phase, which two workers sharing a core would explain). Pinned, no two workers share a core while
    there are as many cores as workers; the calling thread is pinned for the pass only."""
    choice = os.environ.get(PIN_ENV, "").strip()
    if choice not in ("", "0", "1"):
        raise MixerError(f"{PIN_ENV}={os.environ[PIN_ENV]!r} is not a choice: set it to 1 (a core for each worker) "
                         "or 0 (or unset it)")
    if choice != "1" or not hasattr(os, "sched_setaffinity"):
        return None
    return sorted(os.sched_getaffinity(0))


def supported():
    """Whether worker processes are used for W > 1: NUMPY_MIXER_WORKERS, else x86-64 Linux or macOS."""
    choice = os.environ.get(ENV, "auto").strip().lower()
    if choice in ("threads", "thread"):
        return False
    if choice in ("processes", "process"):
        return True
    if choice not in ("auto", ""):
        raise MixerError(f"{ENV}={os.environ[ENV]!r} is not a choice: set it to threads, processes or auto "
                         "(or unset it)")
    return platform.machine().lower() in ("x86_64", "amd64") and sys.platform in ("linux", "darwin")


# --- shared memory: files mapped by every process -------------------------------------------------------

def _shared_folders():
    """Where shared files go: /dev/shm (memory) where there is one, then the temp folder."""
    folders = ["/dev/shm"] if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else []
    return folders + [tempfile.gettempdir()]


class SharedFile:
    """A file of `size` bytes mapped read-write here; other processes map it by path until unlink().

    Its space is reserved up front (posix_fallocate, where there is one): a /dev/shm too small for it
    (containers often have 64 MB) is passed over for the temp folder, instead of a SIGBUS later.
    """

    def __init__(self, size):
        problems = []
        for folder in _shared_folders():
            try:
                fd, path = tempfile.mkstemp(prefix="numpy-mixer-", dir=folder)
            except OSError as e:  # the folder is missing or not writable
                problems.append(f"{folder}: {e.strerror or e}")
                continue
            try:
                os.ftruncate(fd, max(size, 1))
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, max(size, 1))
                self.map = mmap.mmap(fd, max(size, 1))
            except OSError as e:
                problems.append(f"{folder}: {e.strerror or e}")
                os.close(fd)
                os.unlink(path)
                continue
            os.close(fd)
            self.path, self.size = path, size
            _live_files.add(path)
            return
        raise MixerError(f"cannot make {size:,} bytes of shared memory for the worker processes "
                         f"({'; '.join(problems)}) - free some space there, pass a smaller batch, or set {ENV}=threads")

    def unlink(self):
        if self.path in _live_files:
            _live_files.discard(self.path)
            try:
                os.unlink(self.path)
            except OSError:
                pass


_live_files = set()  # paths of shared files not yet unlinked (normally for a moment only)


@atexit.register
def _unlink_left_over():
    for path in list(_live_files):
        try:
            os.unlink(path)
        except OSError:
            pass


def map_file(path, writable=True):
    """A memory map of a whole file, read-write or read-only."""
    with open(path, "r+b" if writable else "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)


# --- the weights: where each leaf of the params tree lives -----------------------------------------------

def _leaves(tree, path=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, path + (i,))
    else:
        yield path, tree


def _file_of(array):
    """(path, byte offset, [device, inode, size, mtime]) of a C-contiguous array inside a safetensors
    file's map made by numpy_mixer.weights (its MappedFile: the file as it was mapped), else None."""
    root = array
    while isinstance(root, np.ndarray) and not isinstance(root.base, mmap.mmap):
        root = root.base  # down to the np.memmap that owns the map of the whole file
    mapped = getattr(root, "mapped_file", None)
    if mapped is None or not array.flags.c_contiguous:
        return None
    start = array.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    return mapped.path, start, [mapped.device, mapped.inode, mapped.size, mapped.mtime_ns]


def describe_weights(params, threads=1):
    """(leaves, shared file or None, copies): each float32 leaf as ["file", path, offset, shape, stat] when
    it is mapped from a file (workers map the same pages), else ["shm", offset, shape] in one shared copy,
    made on `threads` threads; copies: [(array, float offset)] of the copied ones, which refresh_copies()
    copies again before each pass."""
    leaves, copies = [], []
    for path, array in _leaves(params):
        array = np.asarray(array)
        where = _file_of(array) if array.dtype == np.float32 else None
        if where is not None:  # the stat of the file as it was mapped here: workers refuse another
            leaves.append([list(path), ["file", where[0], where[1], list(array.shape), where[2]]])
        else:
            copies.append((path, array))
    shared, placed = None, []
    if copies:
        total = sum(-(-a.size // 16) * 16 for _, a in copies)
        shared = SharedFile(total * 4)
        at = 0
        for path, a in copies:
            leaves.append([list(path), ["shm", at * 4, list(a.shape)]])
            placed.append((a, at))
            at += -(-a.size // 16) * 16
        refresh_copies(shared, placed, threads)
    return leaves, shared, placed


def refresh_copies(shared, placed, threads=1):
    """Copy the in-memory weights into the shared buffer again (they may have been changed in place,
    by training say: the workers must never run on stale weights).

    On `threads` threads (NumPy copies without the GIL): one core does not reach the memory's bandwidth
    (B/16's 240 MB on 2 cores: 36 ms on one thread, 18 on two).
    """
    if shared is None:
        return
    flat = np.frombuffer(shared.map, np.float32)

    def copy(share):
        for array, at in share:
            np.copyto(flat[at:at + array.size].reshape(array.shape), array)

    shares = [[] for _ in range(max(1, threads))]
    sizes = [0] * len(shares)
    for array, at in sorted(placed, key=lambda p: -p[0].size):  # the largest first, each to the least loaded
        i = sizes.index(min(sizes))
        shares[i].append((array, at))
        sizes[i] += array.size
    shares = [share for share in shares if share]
    if len(shares) < 2 or sum(sizes) < COPY_THREADS_FROM:
        copy([p for share in shares for p in share])
        return
    list(_copy_pool(len(shares)).map(copy, shares))  # list(): wait for every share, raise the first error


_copiers, _copier_count = None, 0


def _copy_pool(threads):
    """A thread pool for refresh_copies (threads that wait for work sleep: they take no core meanwhile)."""
    global _copiers, _copier_count
    if _copiers is None or _copier_count < threads:
        if _copiers is not None:
            _copiers.shutdown(wait=False)  # its threads end once idle
        _copiers = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="numpy-mixer-copy")
        _copier_count = threads
    return _copiers


def build_params(leaves, shared_path):
    """The params tree from describe_weights' leaves, in a worker (arrays over maps of the same memory)."""
    maps, tree = {}, {}
    shared = None
    if shared_path is not None:
        shared = map_file(shared_path, writable=False)
    for path, spec in leaves:
        if spec[0] == "file":
            _, name, offset, shape, stat = spec
            if name not in maps:
                with open(name, "rb") as f:
                    st = os.fstat(f.fileno())
                    if [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns] != stat:
                        raise MixerError(f"{name}: the weights file changed since it was loaded; load it again")
                    maps[name] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            count = int(np.prod(shape))
            array = np.frombuffer(maps[name], np.float32, count, offset).reshape(shape)
        else:
            _, offset, shape = spec
            array = np.frombuffer(shared, np.float32, int(np.prod(shape)), offset).reshape(shape)
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = array
    return _lists(tree)


def _lists(tree):
    """Dicts keyed 0..n-1 (the blocks) back into lists."""
    if not isinstance(tree, dict):
        return tree
    if tree and all(isinstance(k, int) for k in tree):
        return [_lists(tree[i]) for i in range(len(tree))]
    return {k: _lists(v) for k, v in tree.items()}


# --- the barrier --------------------------------------------------------------------------------------

class Aborted(Exception):
    """Another worker failed: stop this pass."""


class FlagBarrier:
    """A barrier of W processes over shared flags: each writes the round it reached to its own flag and
    waits until every flag reaches it. abort() makes every waiter raise Aborted."""

    def __init__(self, control, rank, W, alive=None):
        self.flags = control[:W * FLAG_STRIDE:FLAG_STRIDE]
        self.mine = control[rank * FLAG_STRIDE:rank * FLAG_STRIDE + 1]
        self.abort_flag = control[W * FLAG_STRIDE:W * FLAG_STRIDE + 1]
        self.round = 0
        self.alive = alive  # called now and then while waiting long: raises if a worker died

    def wait(self):
        self.round += 1
        self.mine[0] = self.round
        checks = 0
        flags, abort_flag, target = self.flags, self.abort_flag, self.round
        while flags.min() < target:
            if abort_flag[0]:
                raise Aborted()
            checks += 1
            if checks > SPIN_CHECKS:  # a long wait (or more workers than cores): give the core away
                if checks < 4 * SPIN_CHECKS:
                    _yield_core()
                else:
                    time.sleep(0.0001)
                if self.alive is not None and checks % 1000 == 0:
                    self.alive()
        if abort_flag[0]:
            raise Aborted()

    def abort(self):
        self.abort_flag[0] = 1


# --- the task queue ----------------------------------------------------------------------------------------

TOKEN_BYTES = 2  # a token: a task's index in its phase, little-endian ...
END = 0xFFFF  # ... or this, the end of a phase's tasks for the worker that reads it
CHUNK = getattr(select, "PIPE_BUF", 512) // TOKEN_BYTES * TOKEN_BYTES  # bytes per write: at most PIPE_BUF is atomic


class TaskQueue:
    """The tasks of a pass, handed out as the workers ask for them, through one pipe that all W read.

    For each phase in order, this process writes the index of each of its tasks, then one END per
    worker. A worker reads one token at a time (a pipe read is atomic: each token goes to one worker)
    and runs that task, until it reads an END: a worker that falls behind takes fewer tasks (with one
    task per worker, only a worker that starts a phase late gives its task away). It reads one END per
    phase, then waits at the barrier, which nobody passes before all W ENDs are read: so every token of
    a phase is taken before anyone reads the next phase's, and the pipe is empty between passes (a pass
    that fails discards the pool). The writes are non-blocking, of at most PIPE_BUF bytes, an even
    number: each is whole or not at all (no read gets half a token). What does not fit the pipe (past
    Linux's 64 KB; macOS's can be smaller) goes on a thread as the workers make room: written here, a
    full pipe would wait for workers who wait at a barrier for this process.
    """

    def __init__(self, W):
        self.W = W
        self.read_fd, self.write_fd = _pipe()
        os.set_blocking(self.write_fd, False)
        self.tokens = {}  # counts -> the bytes of a pass (the same plan pass after pass)
        self.writer = None  # the thread writing the rest of a pass, if any
        self.closed = False

    def put(self, counts):
        """The tokens of one pass whose phases have counts[i] tasks."""
        counts = tuple(counts)
        if counts not in self.tokens:
            if max(counts, default=0) >= END:
                raise MixerError(f"a phase of {max(counts):,} tasks is more than the task queue holds "
                                 f"({END - 1:,}); use a smaller batch")
            end = np.full(self.W, END)  # one per worker, after each phase's task indices
            pieces = [a for n in counts for a in (np.arange(n), end)] or [np.zeros(0)]
            self.tokens = {counts: np.concatenate(pieces).astype("<u2").tobytes()}  # the last plan's only
        data = self.tokens[counts]
        at = self._write(data, wait=False)
        if at < len(data):  # a daemon thread: never holds up the interpreter's exit
            self.writer = threading.Thread(target=self._write, args=(data[at:], True), daemon=True,
                                           name="numpy-mixer-tasks")
            self.writer.start()

    def _write(self, data, wait):
        """Write data in whole chunks; returns how much was written before the pipe was full (wait=False)
        or closed."""
        at = 0
        while at < len(data) and not self.closed:
            try:
                at += os.write(self.write_fd, data[at:at + CHUNK])
            except BlockingIOError:  # full
                if not wait:
                    break
                select.select([], [self.write_fd], [], 0.1)  # room, or look again (closed?)
            except OSError:  # the pool was closed: nobody reads any more
                break
        return at

    def close(self):
        """Close the pipe (workers blocked on it read its end). A writer thread still at work (after a
        failed pass) stops first, within 0.1 s: it must not write into a descriptor number that has been
        given to another file (nor, closed twice, close another file's)."""
        if self.closed:
            return
        self.closed = True
        if self.writer is not None:
            self.writer.join(timeout=1)
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def take(read_fd, tiles):
    """The tiles of one phase this worker takes from the task queue, as it asks for them."""
    while True:
        token = os.read(read_fd, TOKEN_BYTES)
        if len(token) != TOKEN_BYTES:  # the end of the pipe: the calling process is gone
            raise Aborted()
        index = int.from_bytes(token, "little")
        if index == END:
            return
        yield tiles[index]


# --- the pool, seen from the calling process ---------------------------------------------------------------

def helper_env():
    """The environment of a helper process: single-threaded BLAS."""
    return dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                VECLIB_MAXIMUM_THREADS="1")


def helper_code(rank, W, down_fd, up_fd, tasks_fd):
    """The `python -c` program of helper `rank`: this process's import path first, so that the helper imports
    what this process imported (this numpy_mixer, installed or not, and this numpy). `-c` alone would put the
    current folder first, and a numpy_mixer folder there, another version, would run in the helpers."""
    return (f"import sys; sys.path[:0] = {[os.path.abspath(p) for p in sys.path]!r}; "
            f"from numpy_mixer.processes import worker_main; worker_main({rank}, {W}, {down_fd}, {up_fd}, {tasks_fd})")


def _fingerprint():
    """What a helper must share with this process: the numpy_mixer module it runs, a digest of the package's
    code as it was when it was imported (a package replaced on disk since is another one), and numpy."""
    folder = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    try:
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    digest.update(name.encode() + b"\0" + f.read())
        code = digest.hexdigest()[:16]
    except OSError:  # not a folder of files (a zip): the module's path and numpy's must do
        code = "unreadable"
    return {"module": os.path.abspath(__file__), "code": code,
            "numpy": f"{np.__version__} {os.path.abspath(np.__file__)}"}


FINGERPRINT = _fingerprint()


def _send(conn, message):
    conn.send_bytes(json.dumps(message).encode())


def _recv(conn):
    return json.loads(conn.recv_bytes().decode())


def _pipe():
    """os.pipe(), both ends numbered 3 or more.

    With stdin or stdout closed (`<&-`, `>&-`, os.close(0)), os.pipe() can return 0, 1 or 2: Popen's
    stdin/stdout/stderr=DEVNULL would then overwrite the worker's end of the pipe in the child, and
    anything here that writes to stdout would write into the pipe.
    """
    fds = list(os.pipe())
    try:
        for i, fd in enumerate(fds):
            if fd <= 2:
                import fcntl  # POSIX only, as the worker processes (pass_fds) are
                fds[i] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)  # a close-on-exec copy numbered 3 or more
                os.close(fd)
    except BaseException:
        for fd in set(fds):
            os.close(fd)
        raise
    return tuple(fds)


class Pool:
    """W-1 worker processes and the shared control block; run() does one forward pass on all W."""

    def __init__(self, W, cores=None):
        self.W, self.procs, self.conns, self.cores = W, [], [], cores
        self.control_file = SharedFile((W + 1) * FLAG_STRIDE * 8)
        self.queue = None
        self.control = np.frombuffer(self.control_file.map, np.int64)
        self.weights_key = None  # the leaves of the params tree the workers hold (identity)
        self.placed = []  # (array, offset) of the leaves copied to shared memory
        self.weights_file = None
        self.activations = None
        env = helper_env()
        try:
            self.queue = TaskQueue(W)
            for rank in range(1, W):
                opened = []  # every end so far, closed if the worker cannot be started
                try:
                    down_r, down_w = _pipe()  # this process -> worker
                    opened += [down_r, down_w]
                    up_r, up_w = _pipe()  # worker -> this process
                    opened += [up_r, up_w]
                    code = helper_code(rank, W, down_r, up_w, self.queue.read_fd)
                    proc = subprocess.Popen([sys.executable, "-c", code], env=env, close_fds=True,
                                            pass_fds=(down_r, up_w, self.queue.read_fd),
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
                except BaseException:
                    for fd in opened:
                        os.close(fd)
                    raise
                os.close(down_r)  # the worker's ends: it has its own copies now
                os.close(up_w)
                self.procs.append(proc)
                if cores:
                    try:
                        os.sched_setaffinity(proc.pid, {cores[rank % len(cores)]})
                    except OSError:  # it exited already: its hello says why
                        pass
                self.conns.append((Connection(up_r, writable=False), Connection(down_w, readable=False)))
            for rank, (up, _) in enumerate(self.conns, 1):
                hello = self._reply(rank, up, START_SECONDS, "start")
                theirs = hello.get("fingerprint") or {}
                differ = [k for k in FINGERPRINT if theirs.get(k) != FINGERPRINT[k]]
                if differ:  # never two versions in one pass
                    what = "; ".join(f"{k} {theirs.get(k, '(none)')} where this process has {FINGERPRINT[k]}"
                                     for k in differ)
                    raise WorkerError(f"numpy-mixer worker process {rank} runs another numpy-mixer ({what}); "
                                      f"restart Python (was numpy-mixer reinstalled?), or set {ENV}=threads")
            self._broadcast({"op": "control", "path": self.control_file.path})
            self._collect("map the control block")
        except BaseException:
            self.close()
            raise
        finally:
            self.control_file.unlink()

    def _broadcast(self, message):
        for rank, (_, down) in enumerate(self.conns, 1):
            try:
                _send(down, message)
            except OSError:  # its pipe is closed: it died
                self.procs[rank - 1].wait()
                self.alive()
                raise WorkerError(f"numpy-mixer worker process {rank} closed its pipe; the next call starts new ones") from None

    def _reply(self, rank, up, timeout, doing):
        """The next message from worker `rank`, raising WorkerError if it failed, died or took too long."""
        deadline = time.monotonic() + timeout
        while not up.poll(0.05):
            code = self.procs[rank - 1].poll()
            if code is not None:
                raise WorkerError(f"numpy-mixer worker process {rank} (pid {self.procs[rank - 1].pid}) exited with code "
                                  f"{code} while it was to {doing}; the next call starts new ones (or set {ENV}=threads)")
            if time.monotonic() > deadline:
                raise WorkerError(f"numpy-mixer worker process {rank} did not {doing} within {timeout} s; "
                                  f"set {ENV}=threads to run without worker processes")
        try:
            message = _recv(up)
        except (EOFError, OSError):
            raise WorkerError(f"numpy-mixer worker process {rank} closed its pipe while it was to {doing}; "
                              "the next call starts new ones") from None
        if "error" in message:
            raise WorkerError(message["error"])
        return message

    def _collect(self, doing, timeout=3600):
        """Every worker's reply to the last broadcast, in rank order; the first failure (not an abort)
        raised after all have answered."""
        errors, replies = [], []
        for rank, (up, _) in enumerate(self.conns, 1):
            try:
                message = self._reply(rank, up, timeout, doing)
            except WorkerError as e:
                errors.append(e)
                continue
            replies.append(message)
        if errors:
            raise errors[0]
        return replies

    def alive(self):
        for rank, proc in enumerate(self.procs, 1):
            code = proc.poll()
            if code is not None:
                raise WorkerError(f"numpy-mixer worker process {rank} (pid {proc.pid}) died with exit code {code}; "
                                  "the next call starts new ones")

    def use_weights(self, params):
        """Hand the workers the params tree (mapped, not copied, where it comes from a file; weights held
        in memory are copied to shared memory again before every pass, a memcpy)."""
        arrays = [a for _, a in _leaves(params)]
        if self.weights_key is not None and len(arrays) == len(self.weights_key) and all(
                a is b for a, b in zip(arrays, self.weights_key)):  # the same leaves: refresh the copies only
            refresh_copies(self.weights_file, self.placed, self.W)
            return
        leaves, shared, placed = describe_weights(params, self.W)
        try:
            self._broadcast({"op": "weights", "leaves": leaves, "shared": shared.path if shared else None})
            self._collect("map the weights")
        finally:
            if shared is not None:
                shared.unlink()  # the maps stay; the name goes
        if self.weights_file is not None:
            self.weights_file.map.close()
        self.weights_file, self.weights_key, self.placed = shared, arrays, placed

    def use_activations(self, floats):
        """A shared buffer of at least `floats` float32 values, mapped by every worker."""
        if self.activations is not None and self.activations.size >= floats * 4:
            return np.frombuffer(self.activations.map, np.float32, floats)
        shared = SharedFile(floats * 4)
        try:
            self._broadcast({"op": "activations", "path": shared.path})
            self._collect("map the activations")
        finally:
            shared.unlink()
        self.activations = shared
        return np.frombuffer(shared.map, np.float32, floats)

    def run(self, job, main_share, counts):
        """One pass: every worker takes tasks of `job` from the queue; this process runs main_share(barrier)
        as worker 0. counts: the number of tasks of each phase, in order.

        Returns the helpers' phase times, [[(phase, seconds in tasks, seconds at the barrier before it)]]
        by rank from 1, when job["profile"] is true (else empty lists)."""
        self.control[:] = 0
        self.queue.put(counts)
        self._broadcast(dict(job, op="run"))
        barrier = FlagBarrier(self.control, 0, self.W, alive=self.alive)
        mask = None
        try:
            if self.cores:  # this thread on worker 0's core for the pass, then back on the cores it had
                mask = os.sched_getaffinity(0)
                os.sched_setaffinity(0, {self.cores[0]})
            main_share(barrier)
        except BaseException as e:
            barrier.abort()
            try:
                self._collect("stop", timeout=30)
            except WorkerError as worker_error:
                if isinstance(e, Aborted):
                    raise worker_error from None
            if isinstance(e, Aborted):  # a worker aborted but its reply said nothing more
                raise WorkerError("a numpy-mixer worker process stopped the forward pass") from None
            raise
        finally:
            if mask is not None:
                os.sched_setaffinity(0, mask)
        return [reply.get("times") or [] for reply in self._collect("finish the forward pass")]

    def close(self):
        """Stop the workers and free what the pool holds. A pass cut short (an interrupt while it was being
        handed out, say) is stopped too: the abort flag releases workers waiting at a barrier, and the
        task queue's end releases those waiting for a task; the workers then leave as their pipe closes.
        Any still there after 2 s in all are killed."""
        self.control[self.W * FLAG_STRIDE] = 1  # the abort flag: workers at a barrier raise Aborted
        for _, down in self.conns:
            try:
                down.close()
            except OSError:
                pass
        if self.queue is not None:
            self.queue.close()
        deadline = time.monotonic() + 2
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for up, _ in self.conns:
            up.close()
        self.procs, self.conns = [], []
        for f in (self.activations, self.weights_file, self.control_file):
            if f is not None:
                f.unlink()


_pool = None


def pool(W):
    """The pool of W workers (started, or restarted after a failure or a change of NUMPY_MIXER_PIN, as needed)."""
    global _pool
    cores = pinned_cores()
    if _pool is not None and (_pool.W != W or _pool.cores != cores or any(p.poll() is not None for p in _pool.procs)):
        _pool.close()
        _pool = None
    if _pool is None:
        _pool = Pool(W, cores)
    return _pool


def discard():
    """Close the pool (after a failure: the next call starts new workers)."""
    global _pool
    if _pool is not None:
        _pool.close()
        _pool = None


atexit.register(discard)


def _forget_after_fork():
    """In a child made by fork() (multiprocessing's default on Linux): the pool's helpers, pipes and shared
    memory are the parent's, so they are dropped here, with nothing closed or flagged that the parent
    uses (the child's copies of the descriptors close as they are collected). The child's first pass
    starts helpers of its own, instead of driving the parent's and writing into its memory."""
    global _pool, _copiers, _copier_count
    _pool = None
    _copiers, _copier_count = None, 0  # a thread pool's threads do not survive fork()
    _live_files.clear()  # the parent's to unlink


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


# --- the worker process ---------------------------------------------------------------------------------

def worker_main(rank, W, down_fd, up_fd, tasks_fd):
    """A worker's life: answer the calling process's messages until its pipe closes."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the calling process's to handle
    from . import fast
    down, up = Connection(down_fd, writable=False), Connection(up_fd, readable=False)
    parent = os.getppid()
    state = {}
    _send(up, {"hello": os.getpid(), "fingerprint": FINGERPRINT})

    def parent_alive():
        if os.getppid() != parent:
            os._exit(0)  # orphaned: nobody will read our answers

    scratch = fast._Scratch()
    while True:
        try:
            message = _recv(down)
        except (EOFError, OSError):
            return
        try:
            op = message["op"]
            if op == "control":
                control_map = map_file(message["path"])
                state["control"] = np.frombuffer(control_map, np.int64)
                state["control_map"] = control_map
            elif op == "weights":
                state["params"] = build_params(message["leaves"], message["shared"])
            elif op == "activations":
                m = map_file(message["path"])
                state["activations"], state["activations_map"] = np.frombuffer(m, np.float32), m
            elif op == "run":
                barrier = FlagBarrier(state["control"], rank, W, alive=parent_alive)
                times = [] if message.get("profile") else None
                try:
                    _run_share(fast, message, state, W, tasks_fd, barrier, scratch, times)
                except Aborted:
                    _send(up, {"aborted": True})
                    continue
                except BaseException:
                    barrier.abort()
                    raise
                if times is not None:
                    _send(up, {"ok": True, "times": times})
                    continue
            _send(up, {"ok": True})
        except Exception as e:  # one line back to the caller, which raises it
            text = first_line(e)  # the type's name alone when the message is empty
            what = text if text == type(e).__name__ else f"{type(e).__name__}: {text}"
            _send(up, {"error": f"numpy-mixer worker process {rank}: {what}"})


def _run_share(fast, job, state, W, tasks_fd, barrier, scratch, times=None):
    _, steps = fast.steps_of(state["params"], job, W, state["activations"])
    if fast.plan_key(steps) != job["plan"]:  # never a tile of another plan in the shared arrays
        raise MixerError("it planned other tiles than the calling process (its numpy_mixer differs, or a "
                         "setting of numpy_mixer.fast was changed after the workers started); the next call "
                         "starts new ones")
    fast.run_phases(steps, barrier, lambda i, tiles: take(tasks_fd, tiles), scratch, times)

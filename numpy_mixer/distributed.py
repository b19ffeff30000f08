"""Embeddings of a collection on a Dask cluster: the [dask] extra (pip install ".[dask]" in the source folder).

    from dask.distributed import Client
    from numpy_mixer.distributed import embed
    client = Client("tcp://scheduler:8786")          # a running cluster; Client() starts one on this machine
    result = embed(paths, client, model="mixer_b16_224.goog_in21k_ft_in1k", out="photos.npz")

Dask does the scheduling, data movement and fault tolerance; this module only cuts the work. The paths are
cut into partitions of whole batches (numpy_mixer.embed.batches: the same batches as the single-process
command, so the same bits); each task embeds one partition on a worker. Each worker process loads the
model once, on first use, memory-mapped from its own copy of the weights (its Hugging Face cache or the
path given), and keeps it for its later tasks. Results come back in input order.

Schedule model: with W workers and n images in batches of B, there are P = min(ceil(n / B),
PARTITIONS_PER_WORKER * W) tasks of about n / P images; each worker runs P / W of them. The time is
about (load + n * t_image / W), where t_image is one worker's time per image: loading happens once
per worker, in parallel, and the tasks are many enough per worker that a slow one does not hold up the end.
Dask starts its workers with OMP_NUM_THREADS=1 (distributed.nanny.pre-spawn-environ), so a worker is one
core (the fast path runs one thread): start one single-threaded worker per core (`dask worker
--nworkers auto --nthreads 1`). The model holds when the W workers have cores of their own.
"""
import math
import os
import threading

import numpy as np

from .embed import DEFAULT_BATCH_SIZE, batches, collect_images, embed_batch
from .errors import MixerError, positive_int

PARTITIONS_PER_WORKER = 4  # tasks per worker: enough to even out slow workers, few enough to cost nothing
_MODELS = {}  # in each worker process: model name or path -> MlpMixer, loaded once
_MODELS_LOCK = threading.Lock()


def worker_model(model):
    """The model for `model` (a name or path) in this process, loaded on first use and then kept."""
    with _MODELS_LOCK:
        if model not in _MODELS:
            from .model import load_model

            _MODELS[model] = load_model(model)  # safetensors are memory-mapped: the pages come from disk
        return _MODELS[model]


def embed_partition(model, paths, start, batch_size, known=None):
    """One task: the batches of paths (input positions start, start + 1, ...) through the worker's model.

    known: {path: reason} of inputs already found unusable (missing, a folder without images), reported
    as failed in their place without being read, as the single-process run does.
    -> (indices [b'] int64, embeddings [b', C] float32, [(index, reason)] of images that could not be read),
    or (None, None, reason) when the model cannot be loaded.
    """
    try:
        mixer = worker_model(model)
    except MixerError as e:  # handed back, not raised: Dask would first log the worker's traceback
        return None, None, str(e)
    errors = {path: MixerError(reason) for path, reason in (known or {}).items()}
    indices, features, failed = [], [], []
    for lo, hi in batches(len(paths), batch_size):
        ok, f, bad = embed_batch(mixer, paths[lo:hi], errors)
        indices.append(ok + start + lo)
        features.append(f)
        failed.extend((start + lo + i, reason) for i, reason in bad)
    return np.concatenate(indices), np.concatenate(features), failed


def partitions(count, batch_size, workers):
    """[(start, stop)] of whole batches, PARTITIONS_PER_WORKER per worker (fewer when there are few batches)."""
    num_batches = math.ceil(count / batch_size)
    parts = max(1, min(num_batches, PARTITIONS_PER_WORKER * max(1, workers)))
    per_part = math.ceil(num_batches / parts) * batch_size  # images per partition, a multiple of batch_size
    return [(start, min(start + per_part, count)) for start in range(0, count, per_part)]


def embed(paths, client, model=None, batch_size=DEFAULT_BATCH_SIZE, out=None, progress=False):
    """numpy_mixer.embed on a Dask cluster: the same result, bit for bit, in input order.

    paths: image files and folders, readable at the same paths on every worker; client: a
    dask.distributed.Client; model: a name or .safetensors path that each worker loads itself
    (default mixer_b16_224.goog_in21k_ft_in1k); out: also write FILE.npz as the embed command does.
    Returns {"embeddings": [n, C] float32, "paths": [n] str, "failed": [m] str, "failed_reasons": [m] str}.
    """
    try:
        from dask.distributed import as_completed
    except ImportError:
        raise MixerError('numpy_mixer.distributed needs Dask, which is not installed: pip install "dask[distributed]" '
                         '(the [dask] extra)') from None
    from .weights import DEFAULT_MODEL

    model = DEFAULT_MODEL if model is None else model
    if not isinstance(model, (str, os.PathLike)):
        raise MixerError("numpy_mixer.distributed.embed takes the model as a name or a .safetensors path, which "
                         "each worker loads once (an MlpMixer object would be copied into every task)")
    model = os.fspath(model)
    batch_size = positive_int(batch_size, "batch_size")
    problems = {}  # unusable inputs stay in their place and are reported, as in the single-process run
    files = collect_images(paths, problems)
    workers = len(client.scheduler_info().get("workers", {})) or 1
    spans = partitions(len(files), batch_size, workers)

    def known(lo, hi):
        return {path: str(problems[path]) for path in files[lo:hi] if path in problems}

    futures = [client.submit(embed_partition, model, files[lo:hi], lo, batch_size, known(lo, hi), pure=False)
               for lo, hi in spans]
    size = {f.key: hi - lo for f, (lo, hi) in zip(futures, spans)}
    from tqdm.auto import tqdm

    with tqdm(total=len(files), unit="img", desc="embed", disable=not progress) as bar:
        for future in as_completed(futures):  # a failed task raises here, with the worker's traceback
            bar.update(size[future.key])
    parts = client.gather(futures)  # in input order
    unloaded = next((p[2] for p in parts if p[0] is None), None)
    if unloaded is not None:
        raise MixerError(unloaded)
    indices = np.concatenate([p[0] for p in parts])
    embeddings = np.concatenate([p[1] for p in parts]).astype(np.float32, copy=False)
    failed = [f for p in parts for f in p[2]]
    result = {"embeddings": embeddings, "paths": np.asarray([files[i] for i in indices], dtype=str),
              "failed": np.asarray([files[i] for i, _ in failed], dtype=str),
              "failed_reasons": np.asarray([r for _, r in failed], dtype=str)}
    if out is not None:  # the keys and dtypes the embed command writes
        from .embed import _save_atomic

        _save_atomic(os.fspath(out), **result)
    return result


"""numpy_mixer.distributed.embed on a real Dask cluster (2 worker processes): the single-process result, bit for bit."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from dask.distributed import Client, LocalCluster

import numpy_mixer
from numpy_mixer import MixerError
from numpy_mixer import distributed

from .test_embed import write_crops

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client():
    """LocalCluster(n_workers=2, threads_per_worker=1, processes=True); the workers import numpy_mixer from here."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([old] if old else []))
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as c:
            yield c
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old


def worker_models():
    """On a worker: {model: (id of the loaded MlpMixer, whether its weights are memory-mapped)}."""
    from numpy_mixer import distributed as d

    return {k: (id(m), isinstance(m.params["norm"]["weight"], np.memmap)) for k, m in d._MODELS.items()}


def test_two_workers_give_the_single_process_bits_in_input_order(client, tmp_path, make_checkpoint):
    paths = write_crops(tmp_path / "imgs", 45)
    bad = tmp_path / "imgs" / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    paths.insert(17, str(bad))
    checkpoint, _ = make_checkpoint("mixer_s32_224", num_classes=3)
    for model in ("digits", str(checkpoint)):
        single = numpy_mixer.embed(paths, model=model, batch_size=8)
        spread = distributed.embed(paths, client, model=model, batch_size=8, out=tmp_path / "d.npz")
        assert np.array_equal(spread["embeddings"], single["embeddings"]), model
        assert spread["embeddings"].dtype == np.float32
        assert list(spread["paths"]) == [p for p in paths if p != str(bad)] == list(single["paths"])
        assert list(spread["failed"]) == [str(bad)] and "bad.jpg" in spread["failed_reasons"][0]
        with np.load(tmp_path / "d.npz") as f:  # the file the embed command writes, same keys and bits
            assert sorted(f.files) == sorted(single) and np.array_equal(f["embeddings"], single["embeddings"])
    loaded = client.run(worker_models)
    assert len(loaded) == 2
    for models in loaded.values():  # each worker holds each model once
        assert set(models) <= {"digits", str(checkpoint)}
    mapped = [models[str(checkpoint)][1] for models in loaded.values() if str(checkpoint) in models]
    assert mapped and all(m is True for m in mapped)  # loaded by a worker, memory-mapped from the file


def test_each_worker_loads_the_model_once_across_tasks_and_calls(client, tmp_path):
    paths = write_crops(tmp_path / "imgs", 40)
    distributed.embed(paths, client, model="digits", batch_size=4)  # 10 batches -> 8 tasks over 2 workers
    first = client.run(worker_models)
    distributed.embed(paths[::-1], client, model="digits", batch_size=4)
    assert client.run(worker_models) == first
    assert all("digits" in models for models in first.values())  # both workers did work


def test_missing_inputs_are_reported_in_place_as_the_single_process_run_does(client, tmp_path):
    paths = write_crops(tmp_path / "imgs", 12)
    missing, empty = str(tmp_path / "missing.jpg"), tmp_path / "empty"
    empty.mkdir()
    inputs = paths[:3] + [missing] + paths[3:9] + [str(empty)] + paths[9:]  # in two different partitions
    single = numpy_mixer.embed(inputs, model="digits", batch_size=4)
    spread = distributed.embed(inputs, client, model="digits", batch_size=np.int64(4))  # any integer, as embed's
    assert list(spread["paths"]) == paths == list(single["paths"])
    assert np.array_equal(spread["embeddings"], single["embeddings"])
    assert list(spread["failed"]) == [missing, str(empty)] == list(single["failed"])
    assert list(spread["failed_reasons"]) == list(single["failed_reasons"])
    assert "missing.jpg: no such file" in spread["failed_reasons"][0]
    with pytest.raises(MixerError, match="missing.jpg: no such file"):  # nothing usable: the first error raises
        distributed.embed([missing], client, model="digits")


def test_partitions_are_whole_batches_sized_from_the_worker_count():
    for count, batch, workers in [(200, 16, 2), (200, 16, 16), (5, 16, 4), (1000, 7, 3)]:
        parts = distributed.partitions(count, batch, workers)
        assert parts[0][0] == 0 and parts[-1][1] == count
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert all(lo % batch == 0 for lo, _ in parts)
        assert len(parts) <= distributed.PARTITIONS_PER_WORKER * workers
    assert len(distributed.partitions(200, 16, 2)) == 7 and len(distributed.partitions(200, 16, 1)) == 4


def test_model_must_be_a_name_or_path(client, tmp_path):
    paths = write_crops(tmp_path / "imgs", 2)
    with pytest.raises(MixerError, match="name or a .safetensors path"):
        distributed.embed(paths, client, model=numpy_mixer.load_model("digits"))
    for bad in (True, 0, 2.0):
        with pytest.raises(MixerError, match="batch_size must be a positive integer"):
            distributed.embed(paths, client, model="digits", batch_size=bad)
    with pytest.raises(MixerError, match="unknown model 'no-such-model'") as info:  # loaded on the workers
        distributed.embed(paths, client, model="no-such-model")
    assert "\n" not in str(info.value)


def test_without_dask_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # as if Dask were not installed
    with pytest.raises(MixerError, match=r'^numpy_mixer.distributed needs Dask, which is not installed: '
                                         r'pip install "dask\[distributed\]" \(the \[dask\] extra\)$'):
        distributed.embed([str(tmp_path / "a.jpg")], client=None)

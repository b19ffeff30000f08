"""Time `embed` on a collection: one process, then a Dask LocalCluster of 1 and 2 worker processes.

    PYTHONPATH=$PWD python tools/bench_embed.py [--images 200] [--model digits] [--model mixer_b16_224]

Images: crops of scikit-image's photos (random sizes 96-320 px), written as JPEG files. A model is
"digits" (shipped), an architecture (mixer_b16_224: seeded random weights of trained scale, cached on
disk by numpy_mixer.demo.random_checkpoint), or a path. Each Dask run is timed twice on the same cluster:
the first includes each worker's model load, the second finds the model loaded. Beside each measurement
it prints the schedule model of numpy_mixer.distributed: t(W) ~ load + n * t_image / W, with t_image
taken from the 1-worker warm run (Dask workers are single-threaded: one core each), so a machine with
more cores can be predicted from this one; the model assumes each worker has a core of its own.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_images(folder, count, seed=0):
    import skimage.data

    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut(), skimage.data.rocket()]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = (int(v) for v in rng.integers(96, min(photo.shape[:2]) + 1, 2))
        top, left = rng.integers(0, photo.shape[0] - h + 1), rng.integers(0, photo.shape[1] - w + 1)
        path = Path(folder) / f"img{i:04d}.jpg"
        Image.fromarray(photo[top:top + h, left:left + w]).save(path, quality=90)
        paths.append(str(path))
    return paths


def model_path(name):
    from numpy_mixer.weights import ARCHITECTURES

    if name in ARCHITECTURES:
        from numpy_mixer.demo import random_checkpoint

        return str(random_checkpoint(name))
    return name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", action="append", help="digits (default), an architecture, or a path")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

    import numpy_mixer
    from dask.distributed import Client, LocalCluster
    from numpy_mixer import distributed

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(tmp, args.images)
        print(f"{len(paths)} images, batch {args.batch_size}, {os.cpu_count()} CPUs")
        for name in args.model or ["digits"]:
            model = model_path(name)
            start = time.perf_counter()
            single = numpy_mixer.embed(paths, model=model, batch_size=args.batch_size)
            print(f"{name}: one process, all cores (load + embed): {time.perf_counter() - start:.2f} s", flush=True)
            t_image = None
            for workers in (1, 2):
                with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, Client(cluster) as client:
                    times = []
                    for _ in range(2):
                        start = time.perf_counter()
                        result = distributed.embed(paths, client, model=model, batch_size=args.batch_size)
                        times.append(time.perf_counter() - start)
                    assert np.array_equal(result["embeddings"], single["embeddings"])
                t_image = t_image or times[1] / len(paths)
                predicted = len(paths) * t_image / workers
                tasks = len(distributed.partitions(len(paths), args.batch_size, workers))
                print(f"{name}: {workers} Dask worker(s): {times[0]:.2f} s with the model load, {times[1]:.2f} s "
                      f"loaded ({len(paths) / times[1]:.1f} img/s); schedule model {predicted:.2f} s; "
                      f"{tasks} tasks; bit-equal", flush=True)


if __name__ == "__main__":
    main()

"""Regenerate the exercises' golden fixtures from timm and torch.

Inputs are seeded (numpy_mixer/exercises/fixtures.py: build_inputs); every answer is computed by
timm's own modules (numpy_mixer/exercises/reference.py); the full-size mixer_b16 block's weights
are regenerated from a seed and only their SHA-256 is saved. Writes
numpy_mixer/exercises/fixtures/exercises.safetensors (no pickle). Run: python tools/make_exercise_fixtures.py
"""
import os
import sys

import numpy as np
import torch

from numpy_mixer.exercises import fixtures


def main():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    arrays, metadata = fixtures.build_fixtures()
    path = fixtures.save(arrays, metadata, sys.argv[1] if len(sys.argv) > 1 else fixtures.FIXTURE_PATH)
    total = sum(a.nbytes for a in arrays.values())
    print(f"{path}: {len(arrays)} tensors, {total / 1e6:.2f} MB of data, {os.path.getsize(path) / 1e6:.2f} MB on disk")
    for key in sorted(arrays):
        if key.endswith("/out"):
            a = arrays[key]
            print(f"  {key:<32} {str(a.shape):<18} {a.dtype}  std {np.std(a):.3g}")
    print("metadata:", metadata)


if __name__ == "__main__":
    main()

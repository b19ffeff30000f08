"""Regenerate the exercises' golden fixtures from timm and torch.

Inputs are seeded (numpy_mixer/exercises/fixtures.py: build_inputs); every answer is computed by
timm's own modules (numpy_mixer/exercises/reference.py), the gradients by torch autograd in float64 and
float32, the cost exercise's counts by timm (numel) and torch's FlopCounterMode; the full-size mixer_b16
block's weights are regenerated from a seed and only their SHA-256 is saved. Writes
numpy_mixer/exercises/fixtures/{small,full_size,backward}.safetensors (no pickle).
Run: python tools/make_exercise_fixtures.py [output directory]
"""
import os
import sys

import numpy as np
import torch

from numpy_mixer.exercises import fixtures


def main():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    arrays, metadata = fixtures.build_fixtures()
    paths = fixtures.save(arrays, metadata, sys.argv[1] if len(sys.argv) > 1 else fixtures.FIXTURE_DIR)
    for path in paths:
        print(f"{path}: {os.path.getsize(path) / 1e6:.2f} MB")
    print(f"{len(arrays)} tensors, {sum(a.nbytes for a in arrays.values()) / 1e6:.2f} MB of data")
    for key in sorted(arrays):
        if key.endswith("/out"):
            a = arrays[key]
            print(f"  {key:<32} {str(a.shape):<18} {a.dtype}  std {np.std(a):.3g}")
    print("metadata:", metadata)


if __name__ == "__main__":
    main()

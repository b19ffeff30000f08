"""A smoke test of an installed numpy-mixer, for Pythons the test suite cannot run on (torch is only on 3.11 here).

    python tools/smoke.py        (with numpy-mixer installed, e.g. `pip install .` in a fresh venv)

Checks, with nothing but the run-time dependencies: the `numpy-mixer` command classifies the bundled digit samples
as their names say; a random mixer_s32_224 checkpoint written and read back gives the same features on the fast
path as on the readable layers (within 1e-5 of the largest); and a bad command line is one line with exit status
2. Prints one line and exits 0, or stops at the first failure. .ci/run runs it on Python 3.10 and 3.13.
"""
import os
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np

import numpy_mixer
from numpy_mixer import load_model
from numpy_mixer.checkpoint import config_for, random_state_dict, save_checkpoint

SAMPLES = os.path.join(os.path.dirname(numpy_mixer.__file__), "data", "samples")
EXPECTED = {"four_off_centre.png": "4", "seven.png": "7", "three_white_on_black.png": "3", "two_handwritten.png": "2"}


def command(*args):
    script = os.path.join(sysconfig.get_path("scripts"), "numpy-mixer")  # the console script pip installed
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=300)


def main():
    result = command("predict", SAMPLES, "--model", "digits", "--top-k", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    got = {os.path.basename(lines[i]): lines[i + 1].split()[-1] for i in range(0, len(lines), 2)}
    assert got == EXPECTED, got

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "s32.safetensors")
        save_checkpoint(random_state_dict(config_for("mixer_s32_224"), seed=0), path)
        model = load_model(path)
        x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
        fast, readable = model.forward_features(x), model.forward_features(x, fast=False)
        assert fast.dtype == np.float32 and fast.shape == (3, 49, 512) and readable.std() > 0.1
        error = float(np.abs(fast - readable).max() / np.abs(readable).max())
        assert error <= 1e-5, error

    bad = command("predict", SAMPLES, "--top-k", "0")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    print(f"smoke: Python {sys.version.split()[0]}, numpy {np.__version__}: the digits, fast vs readable "
          f"{error:.1e}, a bad command line: all as expected")


if __name__ == "__main__":
    main()

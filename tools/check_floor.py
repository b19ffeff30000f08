"""The core tests against the lowest versions of the run-time dependencies that pyproject.toml allows.

    python tools/check_floor.py [FOLDER]        (default FOLDER: .floor, ignored by git)

Each run-time dependency is installed at its floor (`numpy>=1.24` -> numpy==1.24, pip's 1.24.0) into FOLDER
(`pip install --target`, with what those versions need themselves), Python is checked to import exactly those
versions from FOLDER, then the core test files run with FOLDER first on the path: the layers, the weights reader,
the fast path, parity with timm, the intermediates and the worker processes. The test tools (torch, timm, pytest)
come from the environment this runs in, as for `pytest`; .ci/run calls this after the README's test command.
Exit status: pytest's, or 1 with one line if a floor cannot be installed or is not what Python imports.
"""
import os
import re
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ["tests/test_layers.py", "tests/test_weights.py", "tests/test_fast.py", "tests/test_parity.py",
         "tests/test_intermediates.py", "tests/test_processes.py"]
IMPORT_NAMES = {"pillow": "PIL"}  # distribution name -> module name, where they differ


def floors(pyproject):
    """{distribution: floor version} of pyproject's run-time dependencies; each must have a `>=` floor."""
    with open(pyproject, "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    found = {}
    for requirement in dependencies:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", requirement.replace(" ", ""))
        if match is None:
            raise SystemExit(f"check_floor: {requirement!r} in {pyproject} has no plain >= floor; give it one")
        found[match[1].lower()] = match[2]
    return found


def check_imports(folder, pins):
    """In the child Python, with folder first on the path: each pinned distribution is imported from folder, at
    its floor version; else exit 1 with one line."""
    import importlib
    import importlib.metadata

    for name, version in pins.items():
        where = importlib.import_module(IMPORT_NAMES.get(name, name)).__file__
        got = importlib.metadata.version(name)
        if not where.startswith(folder + os.sep) or got.split(".")[:len(version.split("."))] != version.split("."):
            sys.exit(f"check_floor: {name} {got} from {where}, expected {version} from {folder}")


def main(folder=".floor"):
    folder = os.path.abspath(folder)
    pins = floors(os.path.join(ROOT, "pyproject.toml"))
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", "--target", folder,
               *(f"{name}=={version}" for name, version in pins.items())]
    print("check_floor: " + " ".join(f"{name}=={version}" for name, version in pins.items()), flush=True)
    if subprocess.run(install).returncode:
        print(f"check_floor: pip could not install the floors into {folder}", file=sys.stderr)
        return 1
    path = [folder, ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    if subprocess.run([sys.executable, __file__, "--check-imports", folder], env=env, cwd=ROOT).returncode:
        return 1
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
                          env=env, cwd=ROOT).returncode


if __name__ == "__main__":
    if sys.argv[1:2] == ["--check-imports"]:  # the child main() starts, with the floors first on its path
        check_imports(sys.argv[2], floors(os.path.join(ROOT, "pyproject.toml")))
        sys.exit(0)
    sys.exit(main(*sys.argv[1:2]))

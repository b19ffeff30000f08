"""The command line under hostile and clumsy use: a table of cases, then hypothesis combining them.

The property, for every command line: exit status 0, 1 or 2; at most a few lines on stderr, each one
ours (`numpy-mixer: error|note: ...`) or argparse's usage; never a traceback; never NaN printed as a
probability; with --json, stdout is JSON Lines that strict JSON accepts. cli.main runs in this process
with stdout and stderr captured (an exception escaping main is a traceback, and fails the test), on the
bundled digits model and a tiny random checkpoint, so that hundreds of command lines take seconds;
a few cases that need a real process (a FIFO, a full disk) run as subprocesses.
"""
import contextlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import skimage.data
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from numpy_mixer import cli
from numpy_mixer.checkpoint import config_for, random_state_dict, save_checkpoint


def png_declaring(width, height):
    """A PNG whose header declares width x height pixels, with one pixel of data (a decompression bomb's shape)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{name: path} of every kind of input the fuzzing draws from."""
    d = tmp_path_factory.mktemp("fuzz")
    photo = Image.fromarray(skimage.data.chelsea()).resize((96, 64))
    f = {}

    def path(name):
        f[name] = str(d / name)
        return f[name]

    photo.save(path("cat.jpg"))
    photo.convert("L").save(path("gray.png"))
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16) * 16).reshape(64, 64)).save(path("gray16.png"))
    photo.convert("RGBA").save(path("rgba.png"))
    Image.new("RGB", (1, 1), "white").save(path("one-pixel.png"))
    Image.new("L", (2, 400), 0).save(path("thin.png"))
    with open(path("text.jpg"), "w") as out:
        out.write("hello")
    open(path("empty.jpg"), "wb").close()
    png = io.BytesIO()
    photo.save(png, "PNG")
    with open(path("truncated.png"), "wb") as out:
        out.write(png.getvalue()[:200])
    with open(path("bomb.png"), "wb") as out:
        out.write(png_declaring(50_000, 50_000))
    with open(path("._cat.jpg"), "wb") as out:
        out.write(b"\x00\x05\x16\x07" + bytes(60))  # macOS AppleDouble
    os.mkfifo(path("fifo.jpg"))
    os.symlink(path("loop.jpg"), path("loop.jpg"))  # a symlink to itself
    os.mkdir(path("folder"))
    for name in ["cat.jpg", "text.jpg", "._cat.jpg"]:
        with open(f[name], "rb") as src, open(os.path.join(f["folder"], name), "wb") as dst:
            dst.write(src.read())
    os.mkdir(path("no-images"))
    f["missing"] = str(d / "missing.jpg")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        f["dead-url"] = f"http://127.0.0.1:{s.getsockname()[1]}/cat.jpg"

    state = random_state_dict(config_for("mixer_s32_224", depth=1, num_classes=10), seed=1)
    save_checkpoint(state, path("tiny.safetensors"))
    nan = dict(state, **{"head.bias": np.full(10, np.nan, np.float32)})
    save_checkpoint(nan, path("nan.safetensors"))
    with open(f["tiny.safetensors"], "rb") as src, open(path("cut.safetensors"), "wb") as dst:
        dst.write(src.read()[:5000])
    save_checkpoint({k: v for k, v in state.items() if not k.startswith("head")}, path("headless.safetensors"))
    with open(path("model.pth"), "wb") as out:
        out.write(b"\x80\x04")
    return f


def call(argv):
    """(exit status, stdout, stderr) of cli.main(argv) in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main([str(a) for a in argv])
        except SystemExit as e:  # argparse: --help, --version, a bad command line
            status = e.code
    return status, out.getvalue(), err.getvalue()


def check_property(argv, status, stdout, stderr):
    """What every command line must give; see the module docstring."""
    where = f"numpy-mixer {' '.join(map(str, argv))}\nstdout: {stdout[-500:]}\nstderr: {stderr[-2000:]}"
    assert status in (0, 1, 2), where
    assert "Traceback" not in stderr, where
    lines = stderr.splitlines()
    images = sum(1 for a in argv if not str(a).startswith("-"))
    if status == 2:  # a bad command line: one line, as every other error
        assert len(lines) == 1 and lines[0].startswith("numpy-mixer: error: "), where
    else:
        assert len(lines) <= images + 3, where
        assert all(line.startswith("numpy-mixer: ") for line in lines), where
    assert "nan%" not in stdout.lower(), where
    if "--json" in argv and status != 2 and not {"-h", "--help"} & set(argv):
        for line in stdout.splitlines():
            entry = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in JSON\n{where}"))
            assert ("predictions" in entry) != ("error" in entry), where
    if status == 0 and argv and argv[0] == "predict":
        assert stdout.strip(), where


# the table: (argv with file names from `files`, expected exit status, a fragment of stderr's last line)
TABLE = [
    ([], 2, "required"),
    (["nope"], 2, "invalid choice"),
    (["--frobnicate"], 2, "required"),
    (["predict"], 2, "IMAGE"),
    (["predict", "cat.jpg", "--model", "digits", "--frobnicate"], 2, "unrecognized arguments"),
    (["predict", "cat.jpg", "--model", "digits", "--top-k", "three"], 2, "invalid int value"),
    (["predict", "cat.jpg", "--model", "digits", "--top-k"], 2, "expected one argument"),
    (["predict", "cat.jpg", "--model", "digits", "--batch-size", "1.5"], 2, "invalid int value"),
    (["predict", "cat.jpg", "--model", "digits", "--progress", "sometimes"], 2, "invalid choice"),
    (["predict", "cat.jpg", "--model", "digits", "--weights", "tiny.safetensors"], 2, "not allowed with"),
    (["predict", "cat.jpg", "--model", "digits", "--top-k", "0"], 2, "--top-k: must be at least 1, got 0"),
    (["predict", "cat.jpg", "--model", "digits", "--top-k", "-1"], 2, "--top-k: must be at least 1, got -1"),
    (["predict", "cat.jpg", "--model", "digits", "--top-k", str(10 ** 30)], 0, "showing all 10"),
    (["predict", "cat.jpg", "--model", "digits", "--batch-size", "0"], 2, "--batch-size: must be at least 1"),
    (["predict", "cat.jpg", "--model", "digits", "--batch-size", str(10 ** 9)], 0, None),
    (["predict", "cat.jpg", "gray.png", "gray16.png", "rgba.png", "one-pixel.png", "thin.png", "--model", "digits",
      "--batch-size", "4"], 0, None),
    (["predict", "missing", "--model", "digits"], 1, "missing.jpg: no such file"),
    (["predict", "", "--model", "digits"], 1, "no such file"),
    (["predict", "new\nline\x1b[2J.jpg", "--model", "digits"], 1, "new\\nline\\x1b[2J.jpg: no such file"),  # found by hypothesis
    (["predict", "cat.jpg", "--model", "digits", "--bad\nflag"], 2, "unrecognized arguments: --bad\\nflag"),
    (["predict", "text.jpg", "--model", "digits"], 1, "text.jpg: not an image"),
    (["predict", "empty.jpg", "--model", "digits"], 1, "empty.jpg"),
    (["predict", "truncated.png", "--model", "digits"], 1, "truncated.png"),
    (["predict", "bomb.png", "--model", "digits"], 1, "bomb.png"),
    (["predict", "._cat.jpg", "--model", "digits"], 1, "._cat.jpg"),
    (["predict", "fifo.jpg", "--model", "digits"], 1, "fifo.jpg: is a FIFO (named pipe), not an image file"),
    (["predict", "loop.jpg", "--model", "digits"], 1, "loop.jpg: cannot open"),
    (["predict", "no-images", "--model", "digits"], 1, "no-images: folder has no image files"),
    (["predict", "folder", "--model", "digits"], 1, "1 of 2 images could not be classified"),
    (["predict", "folder", "missing", "fifo.jpg", "--model", "digits", "--json"], 1, "3 of 4 images"),
    (["predict", "dead-url", "--model", "digits"], 1, "cannot fetch the image"),
    (["predict", "cat.jpg", "--weights", "tiny.safetensors", "--json"], 0, None),
    (["predict", "cat.jpg", "gray.png", "--weights", "nan.safetensors"], 1, "'head.bias' has 10 NaN"),  # refused at load
    (["predict", "cat.jpg", "--weights", "nan.safetensors", "--json"], 1, "NaN"),
    (["predict", "cat.jpg", "--weights", "cut.safetensors"], 1, "cut.safetensors"),
    (["predict", "cat.jpg", "--weights", "headless.safetensors"], 1, "no classifier head"),
    (["predict", "cat.jpg", "--weights", "model.pth"], 1, "pickled checkpoint"),
    (["predict", "cat.jpg", "--weights", "missing"], 1, "no such file"),
    (["predict", "cat.jpg", "--weights", "folder"], 1, "is a directory"),
    (["predict", "cat.jpg", "--weights", "fifo.jpg"], 1, "a FIFO"),
    (["predict", "cat.jpg", "--weights", "/dev/zero"], 1, "character device"),
    (["predict", "cat.jpg", "--weights", "loop.jpg"], 1, "cannot open"),
    (["predict", "cat.jpg", "--model", "mixer_b16_224.nope"], 1, "unknown model"),
    (["predict", "cat.jpg", "--model", "mixer_s32_224"], 1, "no pretrained weights"),
    (["random-checkpoint", "mixer_x99", "out.safetensors"], 2, "invalid choice"),
    (["random-checkpoint", "mixer_s32_224"], 2, "OUT"),
    (["random-checkpoint", "mixer_s32_224", "tiny.safetensors"], 1, "already exists"),
    (["random-checkpoint", "mixer_s32_224", "missing/x.safetensors"], 1, "does not exist"),
    (["random-checkpoint", "mixer_s32_224", "x.safetensors", "--num-classes", "-1"], 2, "--num-classes: must be 0 to"),
    (["random-checkpoint", "mixer_s32_224", "x.safetensors", "--seed", "-1"], 2, "--seed: must be at least 0, got -1"),
    (["random-checkpoint", "mixer_s32_224", "x.safetensors", "--seed", "x"], 2, "invalid int value"),
]


def resolve(argv, files):
    """Table names -> paths in the fixture folder (`missing/x` -> a folder that does not exist)."""
    base = os.path.dirname(files["cat.jpg"])
    out = []
    for a in argv:
        if a in files:
            out.append(files[a])
        elif a.endswith(".safetensors") and a not in files:
            out.append(os.path.join(base, a))
        else:
            out.append(a)
    return out


@pytest.mark.parametrize("argv, expected, fragment", TABLE, ids=[" ".join(t[0])[:60] or "(none)" for t in TABLE])
def test_table(files, argv, expected, fragment):
    argv = resolve(argv, files)
    status, stdout, stderr = call(argv)
    check_property(argv, status, stdout, stderr)
    assert status == expected, (argv, stdout, stderr)
    if fragment is not None:
        assert fragment in stderr.splitlines()[-1], stderr
    elif expected == 0:
        assert stderr == "", stderr


def test_version_and_help(files):
    status, stdout, _ = call(["--version"])
    assert status == 0 and stdout.startswith("numpy-mixer ")
    for argv in [["--help"], ["predict", "--help"], ["random-checkpoint", "--help"]]:
        status, stdout, stderr = call(argv)
        assert status == 0 and "usage: numpy-mixer" in stdout and stderr == ""


# --- hypothesis: any combination of the same pieces ------------------------------------------------

IMAGES = ["cat.jpg", "gray.png", "gray16.png", "rgba.png", "one-pixel.png", "thin.png", "text.jpg", "empty.jpg",
          "truncated.png", "bomb.png", "._cat.jpg", "fifo.jpg", "loop.jpg", "folder", "no-images", "missing",
          "dead-url", "", "-", "predict"]
SOURCES = [["--model", "digits"]] * 4 + [["--weights", "tiny.safetensors"]] * 2 + [
    ["--weights", "nan.safetensors"], ["--weights", "cut.safetensors"], ["--weights", "headless.safetensors"],
    ["--weights", "model.pth"], ["--weights", "folder"], ["--weights", "fifo.jpg"], ["--weights", "missing"],
    ["--model", "nope"], ["--model", "digits", "--weights", "tiny.safetensors"], ["--weights"], ["--model"]]
OPTIONS = st.one_of(  # well-formed options: the run goes on to the images
    st.just(["--json"]), st.just(["--progress", "off"]),
    st.builds(lambda n: ["--top-k", str(n)], st.integers(-2, 12) | st.sampled_from([1000, 2 ** 63])),
    st.builds(lambda n: ["--batch-size", str(n)], st.integers(-1, 5) | st.just(2 ** 31)),
)
MISTAKES = st.one_of(  # a mistyped command line: argparse's exit 2, unless the text happens to be a file name
    st.sampled_from([["--frobnicate"], ["-k", "3"], ["--top-k=2"], ["--json=yes"], ["-h"], ["--progress", "loud"],
                     ["--top-k", "x"], ["--top-k", ""], ["--top-k", "1e3"], ["--batch-size", "٣"], ["--top-k"]]),
    st.text(min_size=1, max_size=8).map(lambda s: [s]),
)


@settings(deadline=None, max_examples=3 * settings().max_examples, suppress_health_check=[HealthCheck.too_slow])
@given(images=st.lists(st.sampled_from(IMAGES), min_size=1, max_size=4), source=st.sampled_from(SOURCES),
       options=st.lists(OPTIONS, max_size=3), mistake=st.one_of(st.just([]), st.just([]), st.just([]), MISTAKES),
       order=st.randoms(use_true_random=False))
def test_any_command_line(files, images, source, options, mistake, order):
    chunks = [[name] for name in images] + [source] + options + ([mistake] if mistake else [])
    order.shuffle(chunks)
    argv = resolve(["predict"] + [a for chunk in chunks for a in chunk], files)
    if "\x00" in "".join(argv):
        argv = [a.replace("\x00", "") for a in argv]  # argv can hold no NUL (a subprocess would refuse it)
    status, stdout, stderr = call(argv)
    event(f"exit {status}")  # pytest --hypothesis-show-statistics shows the mix
    check_property(argv, status, stdout, stderr)


# --- through a real process: what cannot be captured in this one ---------------------------------------

def test_fifo_and_full_disk_through_a_process(files):
    command = [sys.executable, "-m", "numpy_mixer", "predict", files["fifo.jpg"], files["cat.jpg"], "--model", "digits"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)  # a FIFO opened would hang here
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.splitlines()[0] == files["cat.jpg"] and "a FIFO" in result.stderr.splitlines()[0]
    if os.path.exists("/dev/full"):
        with open("/dev/full", "w") as full:
            result = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
        assert result.returncode == 1 and "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
        assert "<stdout>: cannot write the output (No space left on device)" in result.stderr.splitlines()[-1]

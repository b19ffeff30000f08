"""The numpy-mixer command through a subprocess: real photos, JSON, and every bad input."""
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from numpy_mixer import MixerError, load_labels, load_model, predict
from numpy_mixer.predict import classify_each
from numpy_mixer.checkpoint import config_for, random_state_dict, save_checkpoint
from numpy_mixer.cli import RANDOM_WARNING
from numpy_mixer.weights import ARCHITECTURES


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "numpy_mixer", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, **(env or {})))


def assert_one_line_error(result, *fragments, status=1):
    """One line on stderr, `numpy-mixer: error: ...` with each fragment, and the exit status: 1, or 2 for a bad
    command line."""
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("numpy-mixer: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ["chelsea", "coffee", "rocket"]:
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(skimage.data, name)()).save(path, quality=95)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def weights(make_checkpoint):
    return make_checkpoint("mixer_s32_224")[0]


def test_predict_prints_top_k_for_each_photo(photos, weights):
    result = run("predict", *photos[:2], "--weights", weights, "--top-k", 3)
    assert result.returncode == 0, result.stderr
    expected = predict(photos[:2], top_k=3, model=load_model(weights))
    lines = result.stdout.splitlines()
    assert lines[0] == str(photos[0]) and lines[4] == str(photos[1])
    for top, block in zip(expected, [lines[1:4], lines[5:8]]):
        for (label, prob), line in zip(top, block):
            assert line.strip() == f"{prob:.2%}  {label}"


def test_predict_json(photos, weights):
    result = run("predict", photos[2], "--weights", weights, "--json")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()  # JSON Lines: one object per image
    entry = json.loads(line)
    assert entry["image"] == str(photos[2]) and len(entry["predictions"]) == 5
    probs = [p["probability"] for p in entry["predictions"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    expected = predict(str(photos[2]), model=load_model(weights))
    assert [p["label"] for p in entry["predictions"]] == [label for label, _ in expected]
    assert probs == pytest.approx([prob for _, prob in expected], rel=1e-6)
    model = load_model(weights)
    logits = model(model.preprocess(photos[2])[None])[0]
    assert [p["class_index"] for p in entry["predictions"]] == list(np.argsort(-logits, kind="stable")[:5])
    labels = load_labels()
    assert all(labels[p["class_index"]] == p["label"] for p in entry["predictions"])


def test_predict_api_returns_sorted_labels_and_probabilities(photos, weights):
    model = load_model(weights)
    top = predict(photos[0], top_k=5, model=model)
    assert len(top) == 5 and all(isinstance(label, str) for label, _ in top)
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True)
    logits = model(model.preprocess(photos[0])[None])[0]
    assert top[0][0] == load_labels()[int(np.argmax(logits))]
    one_by_one = [predict(p, model=model) for p in photos]
    batched = predict(photos, model=model)
    for single, batch in zip(one_by_one, batched):  # equal up to float32 summation order in the batch
        assert [label for label, _ in single] == [label for label, _ in batch]
        assert [p for _, p in single] == pytest.approx([p for _, p in batch], rel=1e-4)


def test_bad_inputs_each_give_one_line(tmp_path, photos, weights):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    broken_jpeg = tmp_path / "broken.jpg"
    broken_jpeg.write_bytes(photos[0].read_bytes()[:3000])
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(weights.read_bytes()[:100_000])
    misshapen = tmp_path / "misshapen.safetensors"
    state = random_state_dict(config_for("mixer_s32_224", depth=1))
    state["blocks.0.mlp_tokens.fc2.weight"] = state["blocks.0.mlp_tokens.fc2.weight"][:, :100]
    save_checkpoint(state, misshapen)
    headless = tmp_path / "headless.safetensors"
    save_checkpoint(random_state_dict(config_for("mixer_s32_224", depth=1, num_classes=0)), headless)
    no_images = tmp_path / "docs"
    no_images.mkdir()
    (no_images / "readme.pdf").write_bytes(b"%PDF-1.4")  # Pillow can write PDF, not read it
    pickled = tmp_path / "model.pth"
    pickled.write_bytes(b"\x80\x04")
    empty_cache = tmp_path / "hf"
    cases = [
        (("predict", tmp_path / "missing.jpg", "--weights", weights), ["missing.jpg", "no such file"]),
        (("predict", text, "--weights", weights), ["notes.txt", "not an image"]),
        (("predict", broken_jpeg, "--weights", weights), ["broken.jpg", "cannot read the image"]),
        (("predict", photos[0], "--weights", tmp_path / "nope.safetensors"), ["nope.safetensors", "no such file"]),
        (("predict", photos[0], "--weights", truncated), ["truncated.safetensors", "truncated or corrupt"]),
        (("predict", photos[0], "--weights", misshapen),
         ["'blocks.0.mlp_tokens.fc2.weight' has shape (49, 100), expected (49, 256)"]),
        (("predict", photos[0], "--weights", pickled), ["model.pth", "pickled checkpoint"]),
        (("predict", photos[0], "--model", "mixer_b16_224.nope"), ["unknown model 'mixer_b16_224.nope'"]),
        (("predict", photos[0], "--weights", headless), ["headless.safetensors", "no classifier head"]),
        (("predict", photos[0], "--weights", "digits"), ["digits: no such file", "use --model"]),
        (("predict", no_images, "--weights", weights), ["docs: folder has no image files"]),
    ]
    for args, fragments in cases:
        assert_one_line_error(run(*args), *fragments)
    offline = run("predict", photos[0], env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(empty_cache)})
    assert_one_line_error(offline, "cannot download timm/mixer_b16_224.goog_in21k_ft_in1k", "--weights FILE")
    # a mistyped image is named before any attempt to fetch the model
    typo = run("predict", tmp_path / "typo.jpg", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(empty_cache)})
    assert_one_line_error(typo, "typo.jpg: no such file")


def test_console_script_is_installed():
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "numpy-mixer"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "predict" in result.stdout


# --- issue 11: one bad file never stops a run; streamed JSON; any file name; a full disk --------------

def test_folder_and_list_runs_classify_every_readable_image(tmp_path, photos, weights):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in photos[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "._chelsea.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # macOS AppleDouble: skipped
    (folder / "broken.jpg").write_bytes(photos[0].read_bytes()[:3000])
    (folder / "sub.jpg").mkdir()  # not a file: not listed
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it would block forever
    apple = tmp_path / "._a.jpg"
    apple.write_bytes(b"\x00\x05\x16\x07" + bytes(80))
    result = run("predict", folder, fifo, apple, tmp_path / "gone.jpg", photos[2], "--weights", weights, "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    done = {entry["image"]: entry for entry in lines}
    assert len(lines) == 7 and len(done) == 7  # one object per image, errors included
    for p in [folder / photos[0].name, folder / photos[1].name, photos[2]]:
        assert len(done[str(p)]["predictions"]) == 5
    for bad, fragment in [(folder / "broken.jpg", "cannot read the image"), (fifo, "FIFO"),
                          (apple, "not an image"), (tmp_path / "gone.jpg", "no such file")]:
        assert fragment in done[str(bad)]["error"]
    errors = result.stderr.splitlines()
    assert len(errors) == 5 and all(line.startswith("numpy-mixer: error: ") for line in errors)
    assert errors[-1] == "numpy-mixer: error: 4 of 7 images could not be classified (see above)"
    assert sum(str(folder / "broken.jpg") in line for line in errors) == 1


def test_json_lines_stream_one_object_at_a_time_and_head_stops_quietly(photos, weights):
    import time

    images = [photos[0]] * 32  # two batches of 16
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "numpy_mixer", "predict", *map(str, images), "--weights",
                             str(weights), "--json", "--batch-size", "16"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = [json.loads(proc.stdout.readline()) for _ in range(16)]  # the first batch: before the second is done
    first_batch_s = time.monotonic() - start
    still_running = proc.poll() is None
    proc.stdout.close()  # as `| head -16` does
    closed = time.monotonic()
    _, stderr = proc.communicate(timeout=300)
    exit_s = time.monotonic() - closed
    assert all(entry["image"] == str(photos[0]) and len(entry["predictions"]) == 5 for entry in first)
    assert still_running, "the first results came only when every image was done"
    assert proc.returncode == 0 and stderr == "", stderr  # a closed pipe is not an error
    # it stops when the reader goes, not after the second batch (about as long as the first, startup aside)
    assert exit_s < max(0.3, first_batch_s / 4), (exit_s, first_batch_s)


def test_non_finite_logits_are_an_error_never_a_nan_probability(tmp_path, photos):
    from numpy_mixer import MlpMixer

    state = random_state_dict(config_for("mixer_s32_224", depth=1))
    state["head.bias"][3] = np.nan
    nan_weights = tmp_path / "nan.safetensors"
    save_checkpoint(state, nan_weights)
    for extra in [(), ("--json",)]:
        result = run("predict", photos[0], photos[1], "--weights", nan_weights, *extra)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "nan%" not in result.stdout and "NaN" not in result.stdout.replace("(NaN or Inf)", "")
        if extra:  # JSON Lines that strict JSON accepts, each a clear error
            for line in result.stdout.splitlines():
                entry = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in {line}"))
                assert "predictions" not in entry and "error" in entry
        assert "NaN" in result.stderr or "non-finite" in result.stderr, result.stderr
    with pytest.raises(MixerError, match="NaN|non-finite"):
        predict(photos[0], model=MlpMixer(state))


@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "ascii:strict"}, {"LC_ALL": "C", "LANG": "C"}])
def test_file_names_that_are_not_utf8_print_under_a_strict_encoding(tmp_path, photos, env):
    name = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    try:
        with open(name, "wb") as f:
            f.write(photos[0].read_bytes())
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    missing = os.path.join(os.fsencode(tmp_path), b"gone\xff.jpg")
    result = subprocess.run([sys.executable, "-m", "numpy_mixer", "predict", name, missing, "--model", "digits",
                             "--top-k", "1"], capture_output=True, timeout=120, env=dict(os.environ, **env))
    out, err = result.stdout.decode("ascii"), result.stderr.decode("ascii")  # nothing but ASCII came out
    assert result.returncode == 1 and "Traceback" not in err, err
    assert out.splitlines()[0].endswith("caf\\xe9.jpg"), out
    assert "gone\\xff.jpg: no such file" in err.splitlines()[0], err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_stdout_on_a_full_disk_is_one_line(photos):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "numpy_mixer", "predict", str(photos[0]), "--model", "digits"],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert_one_line_error(result, "<stdout>", "No space left on device")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_weights_file_is_one_line(tmp_path, photos, weights):
    locked = tmp_path / "locked.safetensors"
    locked.write_bytes(weights.read_bytes())
    locked.chmod(0)
    assert_one_line_error(run("predict", photos[0], "--weights", locked), "locked.safetensors", "ermission")


# --- the Python API: predict's arguments, the progress bar ---------------------------------------------

def test_predict_takes_a_model_name_or_path_and_checks_its_arguments(photos, weights):
    by_path = predict(photos[0], model=str(weights))
    assert by_path == predict(photos[0], model=load_model(weights))
    assert predict(photos[0], model=weights) == by_path  # a pathlib.Path too
    assert [label for label, _ in predict(photos[0], model="digits", top_k=20)] != []
    assert len(predict(photos[0], model="digits", top_k=20)) == 10  # capped at the number of classes
    for kwargs, fragment in [(dict(model=42), "model must be an MlpMixer"),
                             (dict(model="nope.safetensors"), "nope.safetensors: no such file"),
                             (dict(model="digits", top_k=0), "top_k"), (dict(model="digits", top_k=True), "top_k"),
                             (dict(model="digits", top_k=2.5), "top_k"),
                             (dict(model="digits", batch_size=0), "batch_size")]:
        with pytest.raises(MixerError, match=fragment):
            predict(photos[0], **kwargs)
    with pytest.raises(MixerError, match="no such file"):
        predict("not-here.jpg", model="digits")


def test_progress_bar_reaches_n_of_n(photos, capsys):
    images = [photos[0]] * 5
    predict(images, model="digits", batch_size=2, progress=True)
    assert "5/5" in capsys.readouterr().err
    from numpy_mixer.predict import iter_predict
    assert len(list(zip(images, iter_predict(images, model=load_model("digits"), batch_size=2, progress=True)))) == 5
    assert "5/5" in capsys.readouterr().err  # a caller that stops at the last result (the CLI did) sees 5/5 too
    result = run("predict", *images[:3], "--model", "digits", "--batch-size", 2, "--progress", "on")
    assert result.returncode == 0 and "3/3" in result.stderr, result.stderr
    one = run("predict", photos[0], "--model", "digits", "--progress", "on")
    assert one.returncode == 0 and "1/1" in one.stderr, one.stderr


# --- issue 15: --version, --top-k over K, random-checkpoint, images by URL, extras -------------------

def test_version_and_top_k_larger_than_the_classes(photos):
    import numpy_mixer

    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"numpy-mixer {numpy_mixer.__version__}"
    result = run("predict", photos[0], "--model", "digits", "--top-k", 2000)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1 + 10
    assert result.stderr.strip() == ("numpy-mixer: note: --top-k 2000 is more than the model's 10 classes: "
                                     "showing all 10")


def test_random_checkpoint_command(tmp_path, photos):
    from safetensors import safe_open

    out = tmp_path / "random.safetensors"
    result = run("random-checkpoint", "mixer_s32_224", out, "--num-classes", 10, "--seed", 3)
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.splitlines()
    assert str(out) in line and "RANDOM WEIGHTS" in line and "mean nothing" in line
    with safe_open(str(out), "np") as f:
        assert "mean nothing" in f.metadata()["warning"]
    model = load_model(out)
    from numpy_mixer.demo import has_random_weights

    assert has_random_weights(model) and has_random_weights(model.astype(np.float64))  # the mark, from the header
    assert model.metadata["warning"] == RANDOM_WARNING
    expected = random_state_dict(config_for("mixer_s32_224", num_classes=10), seed=3)
    assert model.num_classes == 10 and model.state_dict().keys() == expected.keys()
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in expected.items())
    predicted = run("predict", photos[0], "--weights", out)  # labels from random weights look real: a note says so
    assert predicted.returncode == 0 and predicted.stdout.strip()
    assert predicted.stderr == f"numpy-mixer: note: {out}: {RANDOM_WARNING}\n", predicted.stderr
    plain = tmp_path / "plain.safetensors"  # the same weights, not marked random: no note
    save_checkpoint(expected, plain)
    assert run("predict", photos[0], "--weights", plain).stderr == ""
    assert_one_line_error(run("random-checkpoint", "mixer_s32_224", out), "already exists", "--force")
    assert run("random-checkpoint", "mixer_x99", tmp_path / "x.safetensors").returncode == 2  # argparse lists them
    assert_one_line_error(run("random-checkpoint", "mixer_s32_224", tmp_path / "no" / "x.safetensors"),
                          "does not exist")


@pytest.fixture(scope="module")
def http_server(photos):
    """A web server on 127.0.0.1 (a thread): /cat.jpg, /page.html, /missing, /endless, /declares-1TB, /slow."""
    import http.server
    import threading
    import time

    body = photos[0].read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/cat.jpg":
                self._send(200, body, "image/jpeg")
            elif self.path == "/page.html":
                self._send(200, b"<html>a page, not an image</html>", "text/html")
            elif self.path == "/declares-1TB":
                self.send_response(200)
                self.send_header("Content-Length", str(10 ** 12))
                self.end_headers()
            elif self.path == "/endless":  # no Content-Length: the client must stop at its cap
                self.send_response(200)
                self.end_headers()
                try:
                    for _ in range(10_000):
                        self.wfile.write(bytes(65536))
                except OSError:
                    pass
            elif self.path == "/slow":
                time.sleep(3)
                self._send(200, body, "image/jpeg")
            else:
                self._send(404, b"not found", "text/plain")

        def _send(self, status, data, kind):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except OSError:  # the client gave up (the timeout test)
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_images_by_url(http_server, photos):
    import socket

    from numpy_mixer.fetch import fetch

    url = f"{http_server}/cat.jpg"
    assert predict(url, model="digits") == predict(photos[0], model="digits")
    model = load_model("digits")
    assert np.array_equal(model.preprocess(url), model.preprocess(photos[0]))
    with socket.socket() as s:  # a port nobody listens on: as offline as a test can be
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/cat.jpg"
    for call, fragment in [(lambda: fetch(f"{http_server}/missing"), "HTTP 404"),
                           (lambda: fetch(dead), "cannot fetch the image"),
                           (lambda: fetch(f"{http_server}/declares-1TB"), "larger than"),
                           (lambda: fetch(f"{http_server}/endless", max_bytes=1_000_000), "larger than 1,000,000"),
                           (lambda: fetch(f"{http_server}/slow", timeout=0.5), "no answer within 0.5 s"),
                           (lambda: predict(f"{http_server}/page.html", model="digits"), "not an image")]:
        with pytest.raises(MixerError, match=fragment):
            call()
    result = run("predict", url, f"{http_server}/missing", "--model", "digits", "--top-k", 1, "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    good, bad = [json.loads(line) for line in result.stdout.splitlines()]
    assert good["image"] == url and "HTTP 404" in bad["error"]
    assert result.stderr.splitlines()[0].startswith(f"numpy-mixer: error: {http_server}/missing: ")
    assert_one_line_error(run("predict", dead, "--model", "digits"), dead, "cannot fetch")


def test_train_extra_is_named_when_scikit_learn_is_missing(monkeypatch):
    from numpy_mixer.train import digits_data, digits_heldout_sets, digits_training_set
    from numpy_mixer.weights import BUNDLED

    for module in ["sklearn", "sklearn.datasets", "sklearn.model_selection"]:
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    for call in [lambda: digits_data(BUNDLED["digits"]), lambda: digits_heldout_sets(BUNDLED["digits"]),
                 lambda: digits_training_set(BUNDLED["digits"], 1, 1, 1, seed=0)]:
        with pytest.raises(MixerError, match=r"pip install scikit-learn \(the \[train\] extra\)"):
            call()


def test_threadpoolctl_is_a_run_time_dependency_and_one_worker_is_the_fallback(monkeypatch, rng):
    tomllib = pytest.importorskip("tomllib")
    from numpy_mixer import MlpMixer, fast

    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert any(d.startswith("threadpoolctl") for d in project["dependencies"])
    assert any(d.startswith("scikit-learn") for d in project["optional-dependencies"]["train"])
    from threadpoolctl import ThreadpoolController

    model = MlpMixer(random_state_dict(config_for("mixer_s32_224", depth=2, num_classes=10)))
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    reference = model(x, fast=False)
    no_blas = ThreadpoolController().select(internal_api="no-such-blas")  # finds nothing, as on macOS Accelerate
    monkeypatch.setattr(fast, "_blas", lambda: no_blas)
    assert fast.num_workers() == 1
    np.testing.assert_allclose(model(x), reference, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(fast, "_blas", lambda: None)  # threadpoolctl missing altogether
    assert fast.num_workers() == 1
    np.testing.assert_allclose(model(x), reference, rtol=1e-5, atol=1e-5)


def readme_commands():
    """The two commands of the README's "Set up", in order."""
    root = os.path.join(os.path.dirname(__file__), "..")
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        setup = f.read().split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = [block.split("```", 1)[0].strip() for block in setup.split("```bash\n")[1:]]
    with open(os.path.join(root, ".ci", "run"), encoding="utf-8") as f:
        return blocks, f.read().splitlines()


def test_readme_set_up_commands():
    (install_and_classify, install_and_test), ci = readme_commands()
    assert install_and_test in ci  # CI runs the README's test command, word for word
    assert "torch==" in install_and_test.split("&&")[0]  # the pin comes first
    install, classify = install_and_classify.split(" && ")
    assert install == "pip install ." and classify.startswith("numpy-mixer predict ")
    args = classify.split()[1:]  # predict IMAGE --model digits
    root = os.path.join(os.path.dirname(__file__), "..")
    if not os.path.isdir(os.path.join(root, "numpy_mixer", "data", "samples")):
        pytest.fail("numpy_mixer/data/samples/ is missing: the README's first command cannot run")
    result = subprocess.run([sys.executable, "-m", "numpy_mixer", *args], capture_output=True, text=True, timeout=120,
                            cwd=root, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.splitlines()[0] == args[1]


def test_predict_of_no_images_loads_no_model(monkeypatch):
    predict_module = sys.modules["numpy_mixer.predict"]  # the attribute numpy_mixer.predict is the function
    monkeypatch.setattr(predict_module, "default_model", lambda: pytest.fail("loaded the default model"))
    assert predict([]) == []
    with pytest.raises(MixerError, match="top_k"):
        predict([], top_k=-1)


# --- a bad command line is one line too; random-checkpoint's bounds; --model's help ----------------------

def call_main(argv):
    """(exit status, stdout, stderr) of cli.main(argv) in this process, SystemExit included."""
    import contextlib
    import io

    from numpy_mixer import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main([str(a) for a in argv])
        except SystemExit as e:
            status = e.code
    return status, out.getvalue(), err.getvalue()


def test_argparse_errors_are_one_line_as_the_readme_says(photos):
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert "Errors are one line, `numpy-mixer: error: " in readme and "2: the command line was wrong" in readme
    for args, line in [
        (("predict", photos[0], "--top-k", "abc"),
         "numpy-mixer: error: argument --top-k: invalid int value: 'abc' - see numpy-mixer predict --help"),
        (("predict",),
         "numpy-mixer: error: the following arguments are required: IMAGE - see numpy-mixer predict --help"),
        (("embed", photos[0], "--model", "digits"),
         "numpy-mixer: error: the following arguments are required: --out - see numpy-mixer embed --help"),
        (("random-checkpoint", "mixer_s32_224", "x.safetensors", "--frobnicate"),
         "numpy-mixer: error: unrecognized arguments: --frobnicate - see numpy-mixer random-checkpoint --help"),
        ((), "numpy-mixer: error: the following arguments are required: command - see numpy-mixer --help"),
        # a number out of range is a bad command line too: refused before anything is read or allocated
        (("predict", photos[0], "--top-k", "0"),
         "numpy-mixer: error: argument --top-k: must be at least 1, got 0 - see numpy-mixer predict --help"),
        (("embed", photos[0], "--out", "e.npz", "--batch-size", "-2"),
         "numpy-mixer: error: argument --batch-size: must be at least 1, got -2 - see numpy-mixer embed --help"),
        (("random-checkpoint", "mixer_s32_224", "x.safetensors", "--seed", "-1"),
         "numpy-mixer: error: argument --seed: must be at least 0, got -1 - see numpy-mixer random-checkpoint --help"),
    ]:
        result = run(*args)
        assert (result.returncode, result.stdout, result.stderr) == (2, "", line + "\n"), result.stderr


# what each command needs to get past argparse, and the options that take an int or a choice
COMMANDS = {"predict": (["cat.jpg"], ["--top-k", "--batch-size"], ["--progress"]),
            "embed": (["cat.jpg", "--out", "e.npz"], ["--batch-size"], ["--progress"]),
            "random-checkpoint": (["mixer_s32_224", "r.safetensors"], ["--num-classes", "--seed"], [])}


def not_an_int(text):  # int() takes " 3", "3_0" and "٣" too
    try:
        int(text)
    except ValueError:
        return True
    return False


@st.composite
def bad_command_lines(draw):
    """[command, ...] that argparse must refuse: a mistake drawn from every kind argparse reports."""
    command = draw(st.sampled_from(sorted(COMMANDS)))
    good, int_options, choice_options = COMMANDS[command]
    text = st.text(min_size=0, max_size=12).map(lambda s: s.replace("\x00", ""))  # argv holds no NUL
    kinds = [
        st.tuples(st.sampled_from(int_options), text.filter(not_an_int)).map(list),  # invalid int value
        st.tuples(st.sampled_from(int_options), st.integers(max_value=-1).map(str)).map(list),  # must be at least
        st.sampled_from(int_options + choice_options).map(lambda option: ["END", option]),  # expected one argument
        text.filter(lambda s: " " not in s).map(lambda s: ["--no-such-" + s]),  # unrecognized arguments
        st.just(["MISSING"]),  # the following arguments are required
    ]
    if choice_options:
        kinds.append(st.tuples(st.sampled_from(choice_options),
                               text.filter(lambda s: s not in ("auto", "on", "off") and not s.startswith("-")))
                     .map(list))  # invalid choice
        kinds.append(st.just(["--model", "digits", "--weights", "w.safetensors"]))  # not allowed with
    else:
        kinds.append(text.filter(lambda s: s not in ARCHITECTURES and not s.startswith("-"))
                     .map(lambda s: ["ARCH", s]))  # invalid choice
    mistake = draw(st.one_of(kinds))
    if mistake == ["MISSING"]:
        return [command] + good[:draw(st.integers(0, len(good) - 1))] if command != "embed" else [command, "cat.jpg"]
    if mistake[0] == "ARCH":
        return [command, mistake[1]] + good[1:]
    if mistake[0] == "END":
        return [command] + good + mistake[1:]
    at = draw(st.integers(0, len(good)))
    return [command] + good[:at] + mistake + good[at:]


@settings(deadline=None, max_examples=2 * settings().max_examples)
@given(argv=bad_command_lines())
def test_any_bad_command_line_is_one_line_that_points_to_the_commands_help(argv):
    status, stdout, stderr = call_main(argv)
    where = f"{argv!r}: {stderr!r}"
    assert status == 2 and stdout == "", where
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), where  # no usage block, no newline from the argument
    assert lines[0].startswith("numpy-mixer: error: "), where
    assert lines[0].endswith(f" - see numpy-mixer {argv[0]} --help"), where


def test_random_checkpoint_bounds_the_head_before_allocating_it(tmp_path, monkeypatch):
    from numpy_mixer import checkpoint
    from numpy_mixer.weights import MAX_NUM_CLASSES

    assert MAX_NUM_CLASSES >= 21843  # ImageNet-21k's head fits
    out = tmp_path / "big.safetensors"
    result = run("random-checkpoint", "mixer_s32_224", out, "--num-classes", 10 ** 12)  # 4 TB of head
    assert_one_line_error(result, f"--num-classes: must be 0 to {MAX_NUM_CLASSES:,}, got {10 ** 12} (0: no head",
                          "see numpy-mixer random-checkpoint --help", status=2)
    assert os.listdir(tmp_path) == []
    made = []

    class Made(Exception):
        pass

    def record(config, seed=0):
        made.append(config.num_classes)
        raise Made

    monkeypatch.setattr(checkpoint, "random_state_dict", record)  # the bound itself, without allocating it
    status, _, stderr = call_main(["random-checkpoint", "mixer_s32_224", out, "--num-classes", MAX_NUM_CLASSES + 1])
    assert status == 2 and f"got {MAX_NUM_CLASSES + 1}" in stderr and made == []
    with pytest.raises(Made):
        call_main(["random-checkpoint", "mixer_s32_224", out, "--num-classes", MAX_NUM_CLASSES])
    assert made == [MAX_NUM_CLASSES]


def test_random_checkpoint_writes_only_what_weights_reads(tmp_path):
    pth = tmp_path / "s.pth"
    assert_one_line_error(run("random-checkpoint", "mixer_s32_224", pth, "--num-classes", 2),
                          f"{pth}: the output must end in .safetensors", f"e.g. {tmp_path / 's'}.safetensors")
    assert_one_line_error(run("random-checkpoint", "mixer_s32_224", tmp_path / "model", "--num-classes", 2),
                          "model: the output must end in .safetensors")
    folder = tmp_path / "some_folder"
    folder.mkdir()
    for force in [(), ("--force",)]:  # --force cannot replace a folder
        assert_one_line_error(run("random-checkpoint", "mixer_s32_224", folder, "--num-classes", 2, *force),
                              f"{folder}: is a folder", f"e.g. {folder / 'mixer_s32_224.safetensors'}")
    assert sorted(os.listdir(tmp_path)) == ["some_folder"] and os.listdir(folder) == []  # no temporary file left


def test_model_help_lists_every_name_load_model_takes_the_same_for_each_command(tmp_path, photos):
    helps = {}
    for command in ["predict", "embed"]:
        status, stdout, _ = call_main([command, "--help"])
        text = " ".join(stdout.split())
        start = text.index("--model NAME ", text.index("--help show this help"))  # the option, not the usage
        helps[command] = text[start:text.index("--weights FILE ", start)]
        for form in ["timm name", "hf-hub:owner/repo[@revision]", "local-dir:FOLDER", "FOLDER with timm's config.json",
                     "a .safetensors file", "'digits'"]:
            assert status == 0 and form in helps[command], (command, form, helps[command])
    assert helps["predict"] == helps["embed"]
    # and they are taken: a folder (bare and local-dir:) and a .safetensors file, as --model
    load_model("digits").save_pretrained(tmp_path / "saved")
    for model in [tmp_path / "saved", f"local-dir:{tmp_path / 'saved'}", tmp_path / "saved" / "model.safetensors"]:
        status, stdout, stderr = call_main(["predict", photos[0], "--model", model, "--top-k", 1])
        assert status == 0 and stdout.startswith(str(photos[0])), stderr


def test_closed_standard_streams_are_an_error_or_ignored_never_a_traceback(photos, tmp_path):
    """`>&-` / `2>&-` (Python then has sys.stdout / sys.stderr = None): predict says stdout is closed;
    embed --out needs neither; a closed stderr only loses the messages, never the results."""
    def shell(command):
        return subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)} -m numpy_mixer {command}"],
                              capture_output=True, text=True, timeout=300)

    image = shlex.quote(str(photos[0]))
    result = shell(f"predict {image} --model digits >&-")
    assert_one_line_error(result, "standard output is closed")
    result = shell(f"predict {image} --model digits 2>&-")
    assert result.returncode == 0 and "%" in result.stdout
    for i, closing in enumerate([">&-", "2>&-", "<&-"]):
        out = tmp_path / f"e{i}.npz"
        result = shell(f"embed {image} --model digits --out {shlex.quote(str(out))} {closing}")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        with np.load(out) as f:
            assert f["embeddings"].shape == (1, 64)


def test_an_image_whose_pass_overflows_is_reported_alone(tmp_path):
    """Finite weights so large that a bright image overflows float32 and a grey one does not: predict and
    embed report the bright one and go on with the others; model(x) on the batch is one line."""
    from numpy_mixer import MlpMixer, embed

    state = random_state_dict(config_for("mixer_s32_224", depth=1, num_classes=3))
    state["stem.proj.weight"][:] = 1e33  # bright: 3e36 per channel, whose LayerNorm sum overflows; grey: 1e34
    state["stem.proj.bias"][:] = 0
    model = MlpMixer(state)
    grey, bright = np.full((64, 64, 3), 128, np.uint8), np.full((64, 64, 3), 255, np.uint8)
    results = [r for _, r in classify_each([grey, bright, grey], model=model, batch_size=3)]
    assert isinstance(results[0], list) and isinstance(results[2], list) and results[0] == results[2]
    assert isinstance(results[1], MixerError) and "non-finite logits" in str(results[1])
    paths = []
    for name, img in (("grey.png", grey), ("bright.png", bright), ("grey2.png", grey)):
        Image.fromarray(img).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    result = embed(paths, model=model, batch_size=3)
    assert list(result["paths"]) == [paths[0], paths[2]] and list(result["failed"]) == [paths[1]]
    assert "non-finite embeddings" in result["failed_reasons"][0] and np.isfinite(result["embeddings"]).all()
    with pytest.raises(MixerError, match="the forward pass overflowed float32"):
        model(np.stack([model.preprocess(img) for img in (grey, bright)]))

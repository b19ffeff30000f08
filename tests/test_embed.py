"""numpy-mixer embed and numpy_mixer.embed: pre-logits of a collection, streamed, resumable, skipping bad files."""
import importlib
import os
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import numpy_mixer
from numpy_mixer import MixerError, load_model
from numpy_mixer.checkpoint import save_checkpoint

from .conftest import timm_model
from .helpers import serve

ROOT = Path(__file__).resolve().parent.parent
embed_module = importlib.import_module("numpy_mixer.embed")  # numpy_mixer.embed itself is the function


def write_crops(folder, count, size=(40, 56), seed=0):
    """`count` small crops of skimage's photos as PNG/JPEG files in folder (two levels). -> [path]"""
    import skimage.data

    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut(), skimage.data.rocket()]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - size[0]), rng.integers(0, photo.shape[1] - size[1])
        sub = Path(folder) / f"part{i // 25}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i:04d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(photo[top:top + size[0], left:left + size[1]]).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def digits_model():
    return load_model("digits")


def reference(model, paths):
    """What embed must give: forward_head(forward_features(x), pre_logits=True), image by image."""
    return np.concatenate([model.forward_head(model.forward_features(model.preprocess(p)[None]), pre_logits=True)
                           for p in paths])


def test_embed_gives_pre_logits_in_input_order_and_skips_unreadable_files(tmp_path, digits_model):
    paths = write_crops(tmp_path / "imgs", 30)
    bad = tmp_path / "imgs" / "part0" / "img0003b.png"
    bad.write_bytes(b"\x89PNG but not really")
    result = numpy_mixer.embed([tmp_path / "imgs"], model=digits_model, batch_size=8)
    files = sorted(paths + [str(bad)])
    good = [p for p in files if p != str(bad)]
    assert list(result["paths"]) == good and list(result["failed"]) == [str(bad)]
    assert "not an image" in result["failed_reasons"][0]
    assert result["embeddings"].dtype == np.float32 and result["embeddings"].shape == (30, 64)
    np.testing.assert_allclose(result["embeddings"], reference(digits_model, good), rtol=0, atol=1e-5)


def test_embeddings_match_timms_pre_logits(tmp_path, make_checkpoint):
    path, state = make_checkpoint("mixer_s32_224", num_classes=3)
    model = load_model(path)
    paths = write_crops(tmp_path / "imgs", 5)
    result = numpy_mixer.embed(paths, model=model, batch_size=4)
    x = torch.from_numpy(np.stack([model.preprocess(p) for p in paths]))
    with torch.no_grad():
        tm = timm_model("mixer_s32_224", state)
        want = tm.forward_head(tm.forward_features(x), pre_logits=True).numpy()
    assert np.abs(result["embeddings"] - want).max() <= 1e-5 * np.abs(want).max()


class Interrupt(Exception):
    pass


def counting(model, fail_after=None):
    """Wrap model.outputs_by_row (embed's pass): count the images it sees; raise Interrupt after fail_after calls."""
    seen = []
    original = model.outputs_by_row

    def outputs_by_row(x, **kwargs):
        if fail_after is not None and len(seen) >= fail_after:
            raise Interrupt
        seen.append(len(x))
        return original(x, **kwargs)

    model.outputs_by_row = outputs_by_row
    return seen


def test_resume_continues_without_recomputing(tmp_path):
    paths = write_crops(tmp_path / "imgs", 45)
    out = tmp_path / "e.npz"
    model = load_model("digits")
    seen = counting(model, fail_after=3)
    with pytest.raises(Interrupt):
        numpy_mixer.embed(paths, out, model=model, batch_size=8)
    partial = Path(f"{out}.partial")
    chunks = sorted(partial.glob("batch-*.npz"))
    assert len(chunks) == 3 and seen == [8, 8, 8] and not out.exists()

    with pytest.raises(MixerError, match="--resume"):  # without --resume it refuses to start over silently
        numpy_mixer.embed(paths, out, model=load_model("digits"), batch_size=8)
    with pytest.raises(MixerError, match=r"had other batch_size \(it had batch_size 8\); the same files"):
        numpy_mixer.embed(paths, out, model=load_model("digits"), batch_size=5, resume=True)

    model = load_model("digits")
    seen = counting(model)
    with numpy_mixer.embed(paths, out, model=model, batch_size=8, resume=True) as resumed:
        embeddings, done = resumed["embeddings"], list(resumed["paths"])
    assert seen == [8, 8, 5]  # only the 45 - 24 images left, nothing twice
    assert not partial.exists()
    whole = numpy_mixer.embed(paths, model=load_model("digits"), batch_size=8)  # one uninterrupted run
    assert done == paths and np.array_equal(embeddings, whole["embeddings"])


def test_chunks_untouched_while_resuming(tmp_path, monkeypatch):
    """The chunks of the interrupted run are read at the end, never rewritten (mtime)."""
    paths = write_crops(tmp_path / "imgs", 20)
    out = tmp_path / "e.npz"
    model = load_model("digits")
    counting(model, fail_after=1)
    with pytest.raises(Interrupt):
        numpy_mixer.embed(paths, out, model=model, batch_size=8)
    first = Path(f"{out}.partial") / "batch-00000000.npz"
    before = first.stat().st_mtime_ns
    written, at_assembly = [], []
    save, assemble = embed_module._save_atomic, embed_module.write_npz
    monkeypatch.setattr(embed_module, "_save_atomic", lambda path, **a: (written.append(path), save(path, **a)))
    monkeypatch.setattr(embed_module, "write_npz",
                        lambda *a: (at_assembly.append(first.stat().st_mtime_ns), assemble(*a))[1])
    numpy_mixer.embed(paths, out, model=load_model("digits"), batch_size=8, resume=True)
    assert str(first) not in written and len(written) == 2 and at_assembly == [before]


def test_final_file_is_written_chunk_by_chunk(tmp_path):
    """Assembling 200 chunks of [16, 768] (9.8 MB) keeps about one chunk in memory, not all of them."""
    rng = np.random.default_rng(0)
    chunks, paths = [], []
    for k in range(200):
        chunks.append(str(tmp_path / f"c{k}.npz"))
        np.savez(chunks[-1], index=np.arange(16 * k, 16 * k + 16), embeddings=rng.random((16, 768), np.float32),
                 failed=np.zeros(0, np.int64), reasons=np.zeros(0, str))
        paths += [f"img{i}" for i in range(16 * k, 16 * k + 16)]
    tracemalloc.start()
    embed_module.write_npz(str(tmp_path / "out.npz"), paths, chunks, 768)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3_000_000, peak  # the paths array (~0.4 MB) and a chunk or two, not 9.8 MB
    with np.load(tmp_path / "out.npz") as f:
        assert f["embeddings"].shape == (3200, 768) and f["embeddings"].dtype == np.float32
        with np.load(chunks[7]) as c:
            assert np.array_equal(f["embeddings"][7 * 16:8 * 16], c["embeddings"])


def test_bad_arguments_are_one_line_errors(tmp_path):
    paths = write_crops(tmp_path / "imgs", 2)
    for kwargs, words in [(dict(out=tmp_path / "e.txt"), ".npz"),
                          (dict(out=tmp_path / "no" / "e.npz"), "no such folder"),
                          (dict(batch_size=0), "batch_size")]:
        with pytest.raises(MixerError, match=words):
            numpy_mixer.embed(paths, model="digits", **{"out": tmp_path / "e.npz", **kwargs})
    with pytest.raises(MixerError, match="no such file"):
        numpy_mixer.embed([tmp_path / "missing.jpg"], model="digits")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MixerError, match="no image files"):
        numpy_mixer.embed([tmp_path / "empty"], model="digits")


def test_command_line(tmp_path, digits_model):
    paths = write_crops(tmp_path / "imgs", 12)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    out = tmp_path / "e.npz"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "numpy_mixer", "embed", str(tmp_path / "imgs"), "--out", str(out),
                          "--model", "digits", "--batch-size", "5", "--progress", "on"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr  # every readable image embedded; the skipped one makes the exit non-zero
    skipped = [line for line in run.stderr.splitlines() if "broken.jpg" in line]  # splitlines: the bar's \r too
    assert skipped == [f"numpy-mixer: error: {tmp_path / 'imgs' / 'broken.jpg'}: not an image Pillow can read - "
                       "check the file"], run.stderr  # as predict reports it
    assert "13/13" in run.stderr
    assert f"{out}: embeddings [12, 64] float32, paths [12]; 1 skipped" in run.stderr
    with np.load(out) as f:
        assert sorted(f.files) == ["embeddings", "failed", "failed_reasons", "paths"]
        assert list(f["paths"]) == sorted(paths) and list(f["failed"]) == [str(tmp_path / "imgs" / "broken.jpg")]
        np.testing.assert_allclose(f["embeddings"], reference(digits_model, sorted(paths)), rtol=0, atol=1e-5)
    again = subprocess.run([sys.executable, "-m", "numpy_mixer", "embed", str(tmp_path / "nowhere"), "--out", str(out),
                            "--model", "digits"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "nowhere" in again.stderr


def test_an_interrupted_command_says_how_to_continue(tmp_path, monkeypatch, capsys):
    """^C during a run: one note in the house format (numpy-mixer: note: ...), and exit status 130."""
    from numpy_mixer import cli

    paths = write_crops(tmp_path / "imgs", 10)
    out = tmp_path / "e.npz"
    embed_batch, done = embed_module.embed_batch, []

    def interrupted(*args, **kwargs):  # ^C during the second batch
        if done:
            raise KeyboardInterrupt
        done.append(embed_batch(*args, **kwargs))
        return done[-1]

    monkeypatch.setattr(embed_module, "embed_batch", interrupted)
    status = cli.main(["embed", *paths, "--out", str(out), "--model", "digits", "--batch-size", "8",
                       "--progress", "off"])
    assert status == 130 and len(list(Path(f"{out}.partial").glob("batch-*.npz"))) == 1
    assert capsys.readouterr().err == (f"numpy-mixer: note: interrupted; the finished batches are in {out}.partial/, "
                                       "the same command with --resume continues\n")


def test_inputs_are_listed_as_predict_lists_them_and_a_missing_one_is_skipped(tmp_path, digits_model):
    paths = write_crops(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "part0" / "._img0000.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS companion
    os.mkfifo(tmp_path / "imgs" / "part0" / "pipe.jpg")  # not a regular file: never listed, never opened
    missing = str(tmp_path / "missing.jpg")
    result = numpy_mixer.embed([paths[0], missing, tmp_path / "imgs"], model=digits_model)
    assert list(result["paths"]) == [paths[0]] + paths
    assert list(result["failed"]) == [missing] and "missing.jpg: no such file" in result["failed_reasons"][0]
    np.testing.assert_array_equal(result["embeddings"][0], result["embeddings"][1])


def test_an_output_that_is_a_folder_is_refused_before_any_work(tmp_path, digits_model):
    paths = write_crops(tmp_path / "imgs", 2)
    (tmp_path / "x.npz").mkdir()
    with pytest.raises(MixerError, match=r"x.npz: is a directory; the output must be a file name ending in .npz"):
        numpy_mixer.embed(paths, tmp_path / "x.npz", model=digits_model)
    assert not (tmp_path / "x.npz.partial").exists() and os.listdir(tmp_path / "x.npz") == []


def test_weights_that_are_not_a_regular_file_get_predicts_message(tmp_path):
    import argparse

    os.mkfifo(tmp_path / "pipe.safetensors")
    for weights, words in [(tmp_path, "is a directory, not a safetensors file"),
                           (tmp_path / "pipe.safetensors", "is a FIFO (named pipe), not a safetensors file"),
                           (tmp_path / "gone.safetensors", "gone.safetensors: no such file")]:
        args = argparse.Namespace(batch_size=1, weights=str(weights), model=None, images=["x.jpg"],
                                  out=str(tmp_path / "e.npz"), resume=False, progress="off")
        with pytest.raises(MixerError, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
            embed_module.run_cli(args)
        assert "\n" not in str(info.value) and "--weights takes a local .safetensors file" in str(info.value)


def test_urls_are_embedded_as_predict_takes_them(tmp_path, digits_model):
    paths = write_crops(tmp_path / "imgs", 2)
    with serve({"/img.png": Path(paths[1]).read_bytes()}) as base:
        url = f"{base}/img.png"
        result = numpy_mixer.embed([paths[1], url, f"{base}/gone.png"], model=digits_model)
    assert list(result["paths"]) == [paths[1], url] and "HTTP 404" in result["failed_reasons"][0]
    np.testing.assert_array_equal(result["embeddings"][0], result["embeddings"][1])


def test_files_are_written_whole_with_the_usual_permissions(tmp_path):
    """files.written_whole, behind the checkpoints, embeddings and chunks the package writes: the target
    appears whole with a new file's permissions, or not at all, and no temporary is left."""
    from numpy_mixer.files import written_whole

    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with written_whole(target) as tmp:
            Path(tmp).write_bytes(b"half")
            raise KeyboardInterrupt  # ^C mid-write
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    umask = os.umask(0o027)
    try:
        with written_whole(target) as tmp:
            Path(tmp).write_bytes(b"new")
        assert target.stat().st_mode & 0o777 == 0o640  # 0o666 less the umask, not mkstemp's private 0o600
        with written_whole(target) as tmp:  # a writer that makes its own file, private (as safetensors does)
            save_checkpoint({"w": np.ones(3, np.float32)}, tmp)
            assert os.stat(tmp).st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    assert target.stat().st_mode & 0o777 == 0o640
    with pytest.raises(MixerError, match=r"x\.bin: cannot write in .*missing \(No such file or directory\)"):
        with written_whole(tmp_path / "missing" / "x.bin"):
            pass


# --- damaged chunks on --resume; numpy integers; inputs that are not paths -----------------------------------

def interrupted_run(tmp_path, count=20, batch_size=8, after=2):
    """An embed run stopped after `after` batches. -> (paths, out, the chunk files on disk)"""
    paths = write_crops(tmp_path / "imgs", count)
    out = tmp_path / "e.npz"
    model = load_model("digits")
    counting(model, fail_after=after)
    with pytest.raises(Interrupt):
        numpy_mixer.embed(paths, out, model=model, batch_size=batch_size)
    return paths, out, sorted(Path(f"{out}.partial").glob("batch-*.npz"))


def damage(chunk, how):
    """Damage a chunk of 8 images [8, 64] in the way named how."""
    with np.load(chunk) as f:
        ok = {key: f[key] for key in f.files}

    def write(**changes):
        np.savez(chunk, **dict(ok, **changes))

    if how == "garbage bytes":
        chunk.write_bytes(b"not a zip file at all\n" * 10)
    elif how == "cut in half":
        chunk.write_bytes(chunk.read_bytes()[:chunk.stat().st_size // 2])
    elif how == "empty":
        chunk.write_bytes(b"")
    elif how == "an object array":  # np.load would refuse it: "Object arrays cannot be loaded"
        write(index=np.array(list(ok["index"]), dtype=object))
    elif how == "a key missing":
        np.savez(chunk, **{k: v for k, v in ok.items() if k != "reasons"})
    elif how == "other features":
        write(embeddings=ok["embeddings"][:, :32].copy())
    elif how == "float64 embeddings":
        write(embeddings=ok["embeddings"].astype(np.float64))
    elif how == "another batch's indices":
        write(index=ok["index"] + 8)
    elif how == "an index past the inputs":
        write(index=np.where(np.arange(8) == 3, 10 ** 6, ok["index"]))
    elif how == "compressed":  # a zip bomb's shape: a small file that inflates to a large array
        np.savez_compressed(chunk, **ok)
    elif how == "a header declaring 10**9 rows":
        with zipfile.ZipFile(chunk, "w") as z, z.open("embeddings.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 9, 64)})
            f.write(bytes(64))
        with zipfile.ZipFile(chunk, "a") as z:
            for key in ["index", "failed", "reasons"]:
                with z.open(f"{key}.npy", "w") as f:
                    np.lib.format.write_array(f, ok[key])
    elif how == "a flipped bit in the embeddings":
        data = bytearray(chunk.read_bytes())
        start = data.index(b"embeddings.npy") + 200  # inside the array's data: only the CRC-32 can tell
        data[start] ^= 1
        chunk.write_bytes(bytes(data))
    else:
        raise AssertionError(how)


DAMAGE = ["garbage bytes", "cut in half", "empty", "an object array", "a key missing", "other features",
          "float64 embeddings", "another batch's indices", "an index past the inputs", "compressed",
          "a header declaring 10**9 rows", "a flipped bit in the embeddings"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_chunk_is_one_line_that_names_it_and_deleting_it_recomputes_that_batch(tmp_path, how):
    paths, out, chunks = interrupted_run(tmp_path)
    damage(chunks[1], how)
    model = load_model("digits")
    seen = counting(model)
    tracemalloc.start()
    with pytest.raises(MixerError) as info:
        numpy_mixer.embed(paths, out, model=model, batch_size=8, resume=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{chunks[1]}: damaged chunk"), message
    assert "delete this file and run again with --resume" in message and f"{out}.partial" in message
    assert peak < 50_000_000, peak  # nothing sized by the file's numbers (10**9 rows would be 256 GB)
    if how != "a flipped bit in the embeddings":  # found by the check at the start, before any work
        assert seen == []
    assert not out.exists() and chunks[0].exists()  # the run can go on
    chunks[1].unlink()  # as the message says: that batch is recomputed, the others are kept
    seen = counting(model)
    with numpy_mixer.embed(paths, out, model=model, batch_size=8, resume=True) as resumed:
        embeddings, done = resumed["embeddings"], list(resumed["paths"])
    whole = numpy_mixer.embed(paths, model=load_model("digits"), batch_size=8)
    assert seen == [8, 4] and done == paths and np.array_equal(embeddings, whole["embeddings"])


def test_a_damaged_chunk_on_the_command_line(tmp_path):
    paths, out, chunks = interrupted_run(tmp_path)
    chunks[0].write_bytes(b"garbage")
    result = subprocess.run([sys.executable, "-m", "numpy_mixer", "embed", *paths, "--out", str(out), "--model",
                             "digits", "--batch-size", "8", "--resume"], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"numpy-mixer: error: {chunks[0]}: damaged chunk"), line


@settings(deadline=None, max_examples=3 * settings().max_examples)
@given(data=st.data())
def test_any_damage_to_a_chunk_gives_its_arrays_or_a_mixer_error(tmp_path_factory, data):
    """read_chunk on a chunk with bytes changed, cut or added: exactly the arrays written, or a MixerError."""
    folder = tmp_path_factory.mktemp("chunk")
    chunk = folder / "batch-00000001.npz"
    arrays = dict(index=np.array([8, 9, 11], np.int64), embeddings=np.arange(3 * 4, dtype=np.float32).reshape(3, 4),
                  failed=np.array([10], np.int64), reasons=np.array(["x.jpg: not an image"]))
    np.savez(chunk, **arrays)
    raw = bytearray(chunk.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["set", "cut", "insert"]))
        at = data.draw(st.integers(0, len(raw) - 1))
        if kind == "set":
            raw[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[at:at + data.draw(st.integers(1, 64))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        if not raw:
            break
    chunk.write_bytes(bytes(raw))
    try:
        got = embed_module.read_chunk(str(chunk), 4, 16, span=(8, 12))
    except MixerError as e:
        assert "\n" not in str(e) and str(e).startswith(f"{chunk}: damaged chunk")
        return
    assert got.keys() == arrays.keys()
    for key, value in arrays.items():
        assert got[key].dtype == value.dtype and np.array_equal(got[key], value), key


def test_batch_size_takes_any_integer_as_predict_does(tmp_path, digits_model):
    paths = write_crops(tmp_path / "imgs", 5)
    want = numpy_mixer.embed(paths, model=digits_model, batch_size=2)
    for batch_size in [np.int64(2), np.int32(2), np.uint8(2)]:
        with numpy_mixer.embed(paths, tmp_path / "e.npz", model=digits_model, batch_size=batch_size) as got:
            assert np.array_equal(got["embeddings"], want["embeddings"]), batch_size  # the same batches
    for batch_size in [True, 2.0, "2", np.int64(0), None]:
        with pytest.raises(MixerError, match="batch_size must be a positive integer"):
            numpy_mixer.embed(paths, model=digits_model, batch_size=batch_size)


def test_inputs_that_are_not_paths_are_one_line_that_says_what_embed_takes(tmp_path, digits_model):
    from PIL import Image

    pixels = np.zeros((3, 3, 3), np.uint8)
    for images, words in [([pixels], "item 0 is a NumPy array of shape (3, 3, 3) - save the image to a file"),
                          (pixels, "got a NumPy array of shape (3, 3, 3)"),
                          ([Image.new("RGB", (3, 3))], "item 0 is a PIL.Image.Image - save the image"),
                          (None, "got None"), (42, "got an int"), ([Path("a.jpg"), 42], "item 1 is an int"),
                          (b"photos/", "got bytes - pass the path as a str"), ([b"photos/"], "item 0 is bytes")]:
        with pytest.raises(MixerError) as info:
            numpy_mixer.embed(images, model=digits_model)
        message = str(info.value)
        assert message.startswith("embed takes a path, URL or folder, or a list of them; ") and words in message
        assert "\n" not in message


def test_a_file_where_the_batches_folder_goes_is_one_line(tmp_path, digits_model):
    images = write_crops(tmp_path / "imgs", 2)
    (tmp_path / "e.npz.partial").write_text("not a folder")
    for resume in (False, True):
        with pytest.raises(MixerError, match=r"e\.npz\.partial: cannot make the folder .*File exists") as info:
            numpy_mixer.embed(images, tmp_path / "e.npz", model=digits_model, resume=resume)
        assert "\n" not in str(info.value)

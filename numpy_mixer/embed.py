"""Embeddings of an image collection: the pre-logits timm's forward_head(x, pre_logits=True) gives.

    numpy-mixer embed photos/ more.jpg --out photos.npz [--model NAME | --weights FILE] [--batch-size B] [--resume]

    result = numpy_mixer.embed(["photos/"], "photos.npz", model="digits")
    result["embeddings"]  # float32 [n, C], one row per image that could be read, in input order
    result["paths"]       # [n] str, the file of each row
    result["failed"]      # [m] str, the files that could not be read (each reported on stderr)

Folders are walked recursively, their image files sorted (numpy_mixer.files.image_files, as predict's
but recursive); http(s) URLs are fetched as predict fetches them. An input that cannot be read is
reported, listed in failed, and skipped. The run streams: batch_size images at a time,
each batch's embeddings written to FILE.npz.partial/ as one chunk (to a temporary name, then renamed,
so a chunk on disk is always whole). An interrupted run continues with resume=True (--resume) from the
chunks on disk, recomputing none of them (each one's header and indices checked first, read_chunk: a damaged
chunk is a one-line error that names it). At the end the chunks are copied one by one into FILE.npz
(written under a temporary name, then renamed) and the .partial folder is removed: memory holds one
batch, never the collection.
"""
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable

import numpy as np

from .errors import MixerError, first_line, positive_int
from .files import check_regular, image_files, written_whole

DEFAULT_BATCH_SIZE = 16
_RUN_FILE = "run.json"


# --- which files -----------------------------------------------------------------------------------------


def collect_images(inputs, errors=None):
    """Files and URLs as given, and every image file under each folder (recursively, sorted). -> [path]

    An input that cannot be used (missing, not a file, a folder without images) is kept in the list, in its
    place, with its MixerError in errors ({path: error}, when given), so the run reports it and goes on;
    without errors, the first one raises. If no input is usable, the first error raises either way.
    Anything but a path (str or os.PathLike) or a list of them (an image array ...) is a MixerError saying so.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    elif isinstance(inputs, (bytes, np.ndarray)) or not isinstance(inputs, Iterable):
        raise MixerError(f"embed takes a path, URL or folder, or a list of them; got {_what(inputs)}")
    inputs = list(inputs)
    for i, item in enumerate(inputs):
        if not isinstance(item, (str, os.PathLike)):
            raise MixerError(f"embed takes a path, URL or folder, or a list of them; item {i} is {_what(item)}")
    items = image_files(inputs, recursive=True)
    if not items:
        raise MixerError("no images to embed")
    problems = [(path, error) for path, error in items if error is not None]
    if problems and (errors is None or len(problems) == len(items)):
        raise problems[0][1]
    if errors is not None:
        errors.update(problems)
    return [path for path, _ in items]


def _what(value):
    """A value that is no path, as an error names it; for an image in memory, how to embed it instead."""
    kind = type(value)
    if value is None:
        return "None"
    if isinstance(value, bytes):
        return "bytes - pass the path as a str (os.fsdecode)"
    if kind.__module__ == "builtins":
        return ("an " if kind.__name__[0] in "aeiou" else "a ") + kind.__name__
    what = f"a NumPy array of shape {value.shape}" if isinstance(value, np.ndarray) else \
        f"a {kind.__module__}.{kind.__qualname__}"
    if isinstance(value, np.ndarray) or kind.__module__.startswith("PIL."):
        what += (" - save the image to a file, or embed it in memory: "
                 "model.forward_head(model.forward_features(model.preprocess(image)[None]), pre_logits=True)")
    return what


# --- one batch -----------------------------------------------------------------------------------------------


def embed_batch(model, paths, errors=None):
    """Pre-logits of the images that can be read. -> (ok [b'] indices into paths, [b', C] float32, [(i, reason)])

    errors: {path: MixerError} already known (collect_images), reported without reading the path.
    """
    from .fast import num_workers
    from .preprocess import read_all, read_or_error

    inputs, ok, failed = [], [], []
    for i, result in enumerate(read_all(paths, lambda path: read_or_error(model, path, errors), num_workers())):
        if isinstance(result, MixerError):  # unreadable: skipped and reported, the run goes on
            failed.append((i, str(result)))
        else:
            inputs.append(result)  # [3, S, S]
            ok.append(i)
    if not inputs:
        return np.zeros(0, np.int64), np.zeros((0, model.num_features), np.float32), failed
    x = np.stack(inputs)  # [b', 3, S, S]
    features = model.outputs_by_row(x, pre_logits=True)  # [b', C]; an overflow: that image's row is not finite
    finite = np.isfinite(features).all(axis=1)
    for j in np.flatnonzero(~finite):
        failed.append((ok[j], f"{paths[ok[j]]}: the model gave non-finite embeddings (NaN or Inf) - check the "
                              "checkpoint's weights and the image"))
    failed.sort()
    ok = np.asarray(ok, np.int64)[finite]
    return ok, features[finite].astype(np.float32, copy=False), failed


def batches(count, batch_size):
    """Batch k covers input positions [k * batch_size, (k + 1) * batch_size): the same batches in every run,
    resumed or on any number of Dask workers, so the embeddings are the same bits."""
    return [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


# --- the run -------------------------------------------------------------------------------------------------


def _load(model):
    from .model import MlpMixer, load_model
    from .weights import DEFAULT_MODEL

    if isinstance(model, MlpMixer):
        return model
    return load_model(DEFAULT_MODEL if model is None else model)


def _fingerprint(model, paths, batch_size):
    """What a resumed run must share with the interrupted one."""
    digest = hashlib.sha256("\n".join(paths).encode("utf-8", "surrogateescape")).hexdigest()
    weights = hashlib.sha256(np.ascontiguousarray(model.params["norm"]["weight"]).tobytes()).hexdigest()[:16]
    return {"model": str(model.pretrained_cfg.get("name")), "weights": weights, "num_features": model.num_features,
            "count": len(paths), "paths_sha256": digest, "batch_size": batch_size}


def _save_atomic(path, **arrays):
    """np.savez, whole or not at all (files.written_whole)."""
    with written_whole(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _chunk_name(k):
    return f"batch-{k:08d}.npz"


def embed(images, out=None, model=None, batch_size=DEFAULT_BATCH_SIZE, resume=False, progress=False):
    """Embed image files and folders; write FILE.npz (out) or, with out=None, keep them in memory.

    images: files, URLs and folders (walked recursively); model: an MlpMixer, or a name/path for load_model
    (default mixer_b16_224.goog_in21k_ft_in1k); resume: continue an interrupted run of the same inputs.
    Returns {"embeddings": [n, C] float32, "paths": [n] str, "failed": [m] str} (np.load's lazy NpzFile
    when out is given).
    """
    if out is None:
        with tempfile.TemporaryDirectory() as tmp:
            summary = embed_to_file(images, os.path.join(tmp, "embeddings.npz"), model, batch_size, False, progress)
            with np.load(summary["out"]) as result:
                return {key: result[key] for key in result.files}
    return np.load(embed_to_file(images, out, model, batch_size, resume, progress)["out"])


def embed_to_file(images, out, model=None, batch_size=DEFAULT_BATCH_SIZE, resume=False, progress=False):
    """embed() with out given, returning a summary: {"out", "count", "failed", "num_features"}."""
    out = os.fspath(out)
    if not out.endswith(".npz"):
        raise MixerError(f"{out}: the output file must end in .npz - give a name such as embeddings.npz")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise MixerError(f"{out}: no such folder for the output file - create "
                         f"{os.path.dirname(os.path.abspath(out))} first, or write elsewhere")
    if os.path.isdir(out):
        raise MixerError(f"{out}: is a directory; the output must be a file name ending in .npz")
    batch_size = positive_int(batch_size, "batch_size")  # a Python int: run.json holds it
    errors = {}
    paths = collect_images(images, errors)
    model = _load(model)
    partial = out + ".partial"
    run = _fingerprint(model, paths, batch_size)
    run_file = os.path.join(partial, _RUN_FILE)
    if os.path.isdir(partial):
        if not resume:
            raise MixerError(f"{partial}: an interrupted run left its batches here; pass --resume "
                             "(resume=True) to continue it, or delete the folder to start again")
        try:
            with open(run_file, encoding="utf-8") as f:
                before = json.load(f)
        except (OSError, json.JSONDecodeError):
            before = None
        if before != run:
            differs = [k for k in run if not isinstance(before, dict) or before.get(k) != run[k]]
            was = [f"{k} {before[k]!r}" for k in differs if isinstance(before, dict) and k in before
                   and isinstance(before[k], (int, str)) and len(repr(before[k])) <= 80]
            raise MixerError(f"{partial}: the interrupted run had other {', '.join(differs) or 'settings'}"
                             + (f" (it had {', '.join(was)})" if was else "")
                             + "; the same files, model and --batch-size are needed to resume - pass those, or "
                             "delete the folder to start again")
    else:
        try:
            os.makedirs(partial)
        except OSError as e:  # a file of that name, or a folder we cannot write in
            raise MixerError(f"{partial}: cannot make the folder for the run's batches ({e.strerror or e}) - "
                             "move that file away, or write the output elsewhere") from None
        with open(run_file, "w", encoding="utf-8") as f:
            json.dump(run, f)

    todo = []
    for k, span in enumerate(batches(len(paths), batch_size)):
        chunk = os.path.join(partial, _chunk_name(k))
        if os.path.isfile(chunk):  # from the interrupted run: checked now, before hours of work, not at the end
            read_chunk(chunk, model.num_features, len(paths), span, keys=("index", "failed"))
        else:
            todo.append((k, span))
    done_images = len(paths) - sum(stop - start for _, (start, stop) in todo)
    from tqdm.auto import tqdm

    from .cli import message_line

    with tqdm(total=len(paths), initial=done_images, unit="img", desc="embed", file=sys.stderr,
              disable=not progress) as bar:
        for k, (start, stop) in todo:
            ok, features, failed = embed_batch(model, paths[start:stop], errors)
            for _, reason in failed:  # each as predict reports it (through the bar, which stays whole)
                bar.write(message_line("error", reason, sys.stderr), file=sys.stderr)
            _save_atomic(os.path.join(partial, _chunk_name(k)), index=ok + start, embeddings=features,
                         failed=np.asarray([start + i for i, _ in failed], np.int64),
                         reasons=np.asarray([r for _, r in failed], dtype=str))
            bar.update(stop - start)
    chunks = [os.path.join(partial, _chunk_name(k)) for k in range(len(batches(len(paths), batch_size)))]
    count, failed = write_npz(out, paths, chunks, model.num_features)
    shutil.rmtree(partial)
    return {"out": out, "count": count, "failed": failed, "num_features": model.num_features}


def write_npz(out, paths, chunks, num_features):
    """Concatenate chunk files (index, embeddings, failed, reasons) into out, one chunk in memory at a time.

    out holds embeddings [n, C] float32 (written straight into the .npz, streaming), paths [n] and
    failed [m] (str), failed_reasons [m] (str). Returns (n, m).
    """
    ok_index, failed_index, reasons = [], [], []
    for chunk in chunks:  # first pass: the indices only (small), to size the embeddings array
        c = read_chunk(chunk, num_features, len(paths), keys=("index", "failed", "reasons"))
        ok_index.append(c["index"])
        failed_index.append(c["failed"])
        reasons.extend(c["reasons"].tolist())
    ok_index, failed_index = np.concatenate(ok_index), np.concatenate(failed_index)
    with written_whole(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        with z.open("embeddings.npy", "w", force_zip64=True) as f:  # [n, C], chunk after chunk
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                      "shape": (len(ok_index), num_features)}
            np.lib.format.write_array_header_2_0(f, header)
            for chunk in chunks:
                c = read_chunk(chunk, num_features, len(paths), keys=("embeddings",))
                f.write(np.ascontiguousarray(c["embeddings"], "<f4").tobytes())
        for name, array in (("paths", np.asarray([paths[i] for i in ok_index], dtype=str)),
                            ("failed", np.asarray([paths[i] for i in failed_index], dtype=str)),
                            ("failed_reasons", np.asarray(reasons, dtype=str))):
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, array, allow_pickle=False)
    return len(ok_index), len(failed_index)


# what a chunk holds (_save_atomic in embed_to_file): name -> dtype kinds and itemsize allowed, any byte order
# (never object: no pickle)
_CHUNK_ARRAYS = {"index": ("iu", None), "embeddings": ("f", 4), "failed": ("iu", None), "reasons": ("U", None)}


def read_chunk(chunk, num_features, count, span=None, keys=tuple(_CHUNK_ARRAYS)):
    """The arrays named in keys of one chunk file, after checking every array's header. -> {name: array}

    A chunk is written whole (_save_atomic), so one that fails here was damaged after (a disk fault, another
    program): a MixerError that names it, never a traceback. Nothing is allocated from the file's numbers
    before they are checked: members must be stored uncompressed, within the file's size on disk, and
    shaped as a chunk is (embeddings [b, num_features], b + len(failed) rows, indices below count; with
    span=(start, stop), exactly the positions start..stop-1, once each).
    """
    def damaged(what):
        return MixerError(f"{chunk}: damaged chunk of an interrupted embed run ({what}) - delete this file and "
                          f"run again with --resume to recompute its batch, or delete {os.path.dirname(chunk)} "
                          "to start over")

    arrays = {}
    try:
        with open(chunk, "rb") as file, zipfile.ZipFile(file) as z:
            size = os.fstat(file.fileno()).st_size
            members = {info.filename: info for info in z.infolist()}
            if sorted(members) != sorted(f"{name}.npy" for name in _CHUNK_ARRAYS):
                raise damaged(f"holds {', '.join(sorted(members)) or 'nothing'}, expected "
                              f"{', '.join(f'{name}.npy' for name in _CHUNK_ARRAYS)}")
            headers = {}
            for name, (kinds, itemsize) in _CHUNK_ARRAYS.items():
                info = members[f"{name}.npy"]
                if info.compress_type != zipfile.ZIP_STORED or not info.compress_size == info.file_size <= size:
                    raise damaged(f"{name}.npy is compressed or larger than the file")  # a zip bomb's shape
                if info.flag_bits & 0x1:  # zipfile would ask for a password (a RuntimeError)
                    raise damaged(f"{name}.npy is encrypted")
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version not in ((1, 0), (2, 0)):
                        raise damaged(f"{name}.npy has .npy format version {version}")
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, fortran_order, dtype = read_header(f)
                    nbytes = math.prod(shape) * dtype.itemsize  # Python integers: no overflow
                    if dtype.kind not in kinds or itemsize not in (None, dtype.itemsize) or fortran_order \
                            or len(shape) != (2 if name == "embeddings" else 1) or f.tell() + nbytes != info.file_size:
                        raise damaged(f"{name}.npy holds {dtype} {shape}, {info.file_size - f.tell()} bytes of data")
                    headers[name] = shape
                    if name in keys:  # at most the file's size, checked above
                        arrays[name] = np.frombuffer(f.read(nbytes), dtype).reshape(shape)
                        f.read()  # to the end of the member: zipfile checks its CRC-32 there
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise damaged(f"{type(e).__name__}: {first_line(e)}") from None
    rows = headers["index"][0]
    if headers["embeddings"] != (rows, num_features) or headers["reasons"] != headers["failed"]:
        raise damaged(f"embeddings {headers['embeddings']} for {rows} indices and {num_features} features, "
                      f"reasons {headers['reasons']} for failed {headers['failed']}")
    if span is not None and rows + headers["failed"][0] != span[1] - span[0]:
        raise damaged(f"{rows} + {headers['failed'][0]} images, expected {span[1] - span[0]}")
    indices = [arrays[name] for name in ("index", "failed") if name in arrays]
    if any(np.any((i < 0) | (i >= count)) for i in indices):
        raise damaged(f"an index outside 0..{count - 1}")
    if span is not None and len(indices) == 2 and \
            not np.array_equal(np.sort(np.concatenate(indices)), np.arange(*span)):
        raise damaged(f"indices other than {span[0]}..{span[1] - 1}, once each")
    return arrays


# --- the command line (numpy_mixer.cli adds this subcommand) -------------------------------------------------


def add_cli_parser(sub):
    """The `embed` subcommand, on cli.py's subparsers."""
    from .cli import MODEL_HELP, WEIGHTS_HELP, int_from  # predict's words: the same names are accepted

    p = sub.add_parser("embed", help="embeddings (pre-logits, float32 [n, C]) of images into a .npz file")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, folders (walked recursively, sorted) or http(s) URLs")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, metavar="NAME", help=MODEL_HELP)
    source.add_argument("--weights", metavar="FILE", help=WEIGHTS_HELP)
    p.add_argument("--out", required=True, metavar="FILE.npz",
                   help="output: embeddings [n, C] float32, paths [n], failed [m], failed_reasons [m]")
    p.add_argument("--batch-size", type=int_from(1), default=DEFAULT_BATCH_SIZE, metavar="B",
                   help=f"images per forward pass and per chunk on disk (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (FILE.npz.partial/)")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress bar on stderr (auto: when stderr is a terminal)")
    return p


def run_cli(args):
    from .cli import say

    if args.weights:  # as predict's (cli.check_weights_file)
        check_regular(args.weights, "safetensors file", " (--weights takes a local .safetensors file; "
                                                          "use --model for a name)")
    progress = {"on": True, "off": False}.get(args.progress, sys.stderr.isatty())
    try:
        summary = embed_to_file(args.images, args.out, model=args.weights or args.model,
                                batch_size=args.batch_size, resume=args.resume, progress=progress)
    except KeyboardInterrupt:
        if os.path.isdir(args.out + ".partial"):
            say("note", f"interrupted; the finished batches are in {args.out}.partial/, the same command with "
                        "--resume continues")
        raise
    n, m, c = summary["count"], summary["failed"], summary["num_features"]
    print(f"{args.out}: embeddings [{n}, {c}] float32, paths [{n}]" + (f"; {m} skipped, listed in failed" if m else ""),
          file=sys.stderr)
    return 1 if m else 0  # as predict: every readable image done, a non-zero exit if any was skipped

"""The numpy-mixer command.

    numpy-mixer predict IMAGE|FOLDER|URL [...] [--model NAME | --weights FILE] [--top-k K] [--json] [--batch-size B]
    numpy-mixer random-checkpoint ARCH OUT.safetensors [--num-classes N] [--seed S] [--force]
    numpy-mixer embed IMAGE|FOLDER|URL [...] --out FILE.npz [--model NAME | --weights FILE] [--resume]
    numpy-mixer --version

One boundary for errors: main() turns every expected failure (a MixerError, an OSError, Pillow's
errors, a failed write to stdout) into one line on stderr, `numpy-mixer: error: <file>: <what> - <what
to do>`, and exit status 1; a bad command line is one such line too (_Parser), with exit status 2, as
argparse gives. An unexpected exception keeps its
traceback: hiding a bug is worse than showing it. A run over many images classifies every image it can
read, reports each one it cannot on its own line, and exits 1 at the end if any failed.
"""
import argparse
import json
import os
import stat
import sys

from . import __version__
from .errors import MixerError
from . import files
from .weights import ARCHITECTURES, DEFAULT_MODEL, MAX_NUM_CLASSES

PROG = "numpy-mixer"
PROGRESS_MIN_IMAGES = 32  # below this a run takes seconds: no bar
RANDOM_WARNING = ("RANDOM WEIGHTS: predictions from this checkpoint mean nothing; it only lets the code run "
                  "offline (made by numpy-mixer random-checkpoint)")


# --model and --weights, as load_model takes them (numpy_mixer.weights.resolve); embed's help says the same
MODEL_HELP = (f"a timm name (default {DEFAULT_MODEL}; from the Hugging Face hub or its cache), "
              "hf-hub:owner/repo[@revision], local-dir:FOLDER or a FOLDER with timm's config.json and "
              "model.safetensors, a .safetensors file, or 'digits' (the small model shipped in the package, "
              "no download)")
WEIGHTS_HELP = "a local .safetensors checkpoint with timm's keys"


class _HelpFormatter(argparse.HelpFormatter):
    def _split_lines(self, text, width):  # as argparse's, but "hf-hub:" stays whole on its line
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line, as every other error, not a usage block then the error:
    `numpy-mixer: error: <what> - see numpy-mixer predict --help`, exit status 2 (subcommands inherit it)."""

    commands = {}  # on the top parser: command name -> its parser (build_parser)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)  # the subcommands' parsers too
        super().__init__(*args, **kwargs)

    def error(self, message):
        say("error", f"{message} - see {self.prog} --help")  # say: control characters escaped, one line
        self.exit(2)

    def parse_args(self, args=None, namespace=None):
        args, extra = self.parse_known_args(args, namespace)
        if extra:  # the command's --help lists the arguments it takes, not the top one's
            self.commands.get(getattr(args, "command", None), self).error(f"unrecognized arguments: {' '.join(extra)}")
        return args


def int_from(low, high=None, note=""):
    """An argparse type: a whole number from low (to high), else a command-line error, exit status 2:
    `numpy-mixer: error: argument --top-k: must be at least 1, got 0 - see numpy-mixer predict --help`."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low or (high is not None and value > high):
            allowed = f"at least {low}" if high is None else f"{low} to {high:,}"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}{note}")
        return value

    return parse


def build_parser():
    parser = _Parser(prog=PROG, description="MLP-Mixer image classification in pure NumPy.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="top-k classes (ImageNet, or digits) of images")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, folders (every image inside, sorted) or http(s) URLs")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, metavar="NAME", help=MODEL_HELP)
    source.add_argument("--weights", metavar="FILE", help=WEIGHTS_HELP)
    p.add_argument("--top-k", type=int_from(1), default=5, metavar="K", help="how many classes to print (default 5)")
    p.add_argument("--json", action="store_true",
                   help="JSON Lines: one object per image, printed as soon as it is classified")
    p.add_argument("--batch-size", type=int_from(1), default=16, metavar="B",
                   help="images per forward pass (default 16); threads follow OMP_NUM_THREADS")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress bar on stderr: auto = when stderr is a terminal and there are over "
                        f"{PROGRESS_MIN_IMAGES} images (default auto)")

    r = sub.add_parser("random-checkpoint", help="write a random-weight checkpoint (offline; predictions mean nothing)",
                       description="Write a seeded random-weight checkpoint of a Mixer architecture, with timm's "
                                   "keys, to try the tools offline. Its predictions mean nothing.")
    r.add_argument("arch", choices=list(ARCHITECTURES), metavar="ARCH", help=f"one of {', '.join(ARCHITECTURES)}")
    r.add_argument("output", metavar="OUT", help="the file to write; its name must end in .safetensors")
    r.add_argument("--num-classes", metavar="N", default=1000,  # bounded before the head [N, C] is allocated
                   type=int_from(0, MAX_NUM_CLASSES, " (0: no head; ImageNet-1k has 1000 classes, ImageNet-21k 21843)"),
                   help=f"classes of the head, 0 to {MAX_NUM_CLASSES:,} (default 1000, ImageNet-1k labels; "
                        "21843 for ImageNet-21k; 0: no head)")
    r.add_argument("--seed", type=int_from(0), default=0, metavar="S", help="random seed (default 0)")
    r.add_argument("--force", action="store_true", help="replace OUT if it exists")

    from .embed import add_cli_parser as add_embed_parser  # numpy-mixer embed: see numpy_mixer/embed.py
    add_embed_parser(sub)
    parser.commands = dict(sub.choices)
    return parser


# --- writing: one flushed line at a time, any file name printable --------------------------------------

class OutputError(Exception):
    """stdout could not be written (a full disk, a closed stdout ...): not the input's fault."""


# control characters (a newline in a file name ...) as escapes: an error stays on one line, a name on its own
_CONTROLS = {c: {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(chr(c), f"\\x{c:02x}")
             for c in [*range(0x20), *range(0x7f, 0xa0)]}
_CONTROLS.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def one_line(text):
    """text with its control characters and line separators escaped."""
    return text.translate(_CONTROLS)


def printable(text, stream):
    """text as stream can encode it: the undecodable bytes of a file name (surrogates) as \\xNN,
    characters the encoding lacks as \\uNNNN; never a UnicodeEncodeError."""
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    encoding = getattr(stream, "encoding", None)
    if encoding:
        text = text.encode(encoding, "backslashreplace").decode(encoding)
    return text


def emit(text):
    """One line (or block) to stdout, flushed now, so a reader sees each result as it comes."""
    try:
        sys.stdout.write(printable(text, sys.stdout) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as e:  # ValueError: stdout closed
        raise OutputError(e) from None


def stop_when_the_reader_goes():
    """When stdout is a pipe, exit as soon as its reader closes it (`| head -1` has what it wants),
    not after the next batch, which may take seconds: a thread waits for the pipe's error event."""
    import select
    import threading

    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode) or not hasattr(select, "poll"):
            return
    except (OSError, ValueError, AttributeError):  # captured (a test) or closed: nothing to watch
        return

    def wait():
        poller = select.poll()
        poller.register(fd, 0)  # no events asked for: poll returns on POLLERR / POLLHUP only
        while True:
            if any(event & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, event in poller.poll()):
                os._exit(0)  # quietly, as on a broken pipe (main); nothing is left to write to

    threading.Thread(target=wait, daemon=True, name="numpy-mixer-stdout").start()


def message_line(kind, message, stream):
    """`numpy-mixer: <kind>: <message>` (kind: error or note), on one line and as stream can print it."""
    return printable(one_line(f"{PROG}: {kind}: {message}"), stream)


def say(kind, message):
    """`numpy-mixer: <kind>: <message>` on stderr (message_line), if stderr is still there."""
    try:
        print(message_line(kind, message, sys.stderr), file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr is gone: nowhere left to say it
        pass


# --- predict ---------------------------------------------------------------------------------------

def image_files(paths):
    """[(image, None) to classify, or (path, MixerError) that cannot be]: folders replaced by the image
    files directly inside them, sorted; URLs kept as they are (numpy_mixer.files.image_files)."""
    return files.image_files(paths, recursive=False)


def check_weights_file(path):
    """A MixerError unless --weights names a regular file."""
    files.check_regular(path, "safetensors file", " (--weights takes a local .safetensors file; use --model for a name)")


def run_predict(args):
    from .model import load_model
    from .predict import classify_each

    if args.weights:
        check_weights_file(args.weights)
    items = image_files(args.images)
    failed = 0

    def report(image, error):
        nonlocal failed
        failed += 1
        say("error", str(error))
        if args.json:
            emit(json.dumps({"image": image, "error": str(error)}))

    for image, error in items:  # before the model loads: a typo should not wait for a download
        if error is not None:
            report(image, error)
    todo = [image for image, error in items if error is None]
    if todo:
        progress = {"on": True, "off": False}.get(args.progress,
                                                   sys.stderr.isatty() and len(todo) > PROGRESS_MIN_IMAGES)
        model = load_model(args.weights or args.model or DEFAULT_MODEL)
        from .demo import has_random_weights

        if has_random_weights(model):  # labels from random weights look real: say so before them
            say("note", f"{model.mapped_file.path}: {RANDOM_WARNING}")
        if 0 < model.num_classes < args.top_k:
            say("note", f"--top-k {args.top_k} is more than the model's {model.num_classes} classes: "
                        f"showing all {model.num_classes}")
        for image, result in classify_each(todo, args.top_k, model, args.batch_size, progress):
            if isinstance(result, MixerError):
                report(image, result)
            elif args.json:
                emit(json.dumps({"image": image, "predictions": [
                    {"label": label, "probability": prob, "class_index": index} for index, label, prob in result]}))
            else:
                emit("\n".join([one_line(image)] + [f"  {prob:7.2%}  {one_line(label)}" for _, label, prob in result]))
    if failed and len(items) > 1:
        say("error", f"{failed} of {len(items)} images could not be classified (see above)")
    return 1 if failed else 0


# --- random-checkpoint -------------------------------------------------------------------------------

def run_random_checkpoint(args):
    from .checkpoint import config_for, random_state_dict, save_checkpoint
    from .demo import _RANDOM_MARK

    out = args.output
    if os.path.isdir(out):  # --force cannot replace a folder: say so, not the temporary file's name
        raise MixerError(f"{out}: is a folder - give a file name ending in .safetensors, e.g. "
                         f"{os.path.join(out, args.arch + '.safetensors')}")
    if not out.lower().endswith(".safetensors"):  # the only format --weights reads (a .pth is refused unopened)
        raise MixerError(f"{out}: the output must end in .safetensors, the format --weights reads - "
                         f"e.g. {os.path.splitext(out.rstrip(os.sep))[0] or args.arch}.safetensors")
    if os.path.lexists(out) and not args.force:
        raise MixerError(f"{out}: already exists - choose another name, or pass --force to replace it")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise MixerError(f"{out}: the folder {folder} does not exist - create it first")
    config = config_for(args.arch, num_classes=args.num_classes)
    state = random_state_dict(config, seed=args.seed)
    metadata = {"format": "pt", "source": _RANDOM_MARK, "warning": RANDOM_WARNING, "arch": args.arch,
                "num_classes": str(args.num_classes), "seed": str(args.seed)}
    try:
        with files.written_whole(out) as tmp:  # never half a checkpoint under the name
            save_checkpoint(state, tmp, metadata=metadata)
    except OSError as e:  # name the output, not the temporary file beside it
        raise MixerError(f"{out}: cannot write it ({e.strerror or e}) - check the path, its permissions and "
                         "the free disk space") from None
    params = sum(v.size for v in state.values())
    say("note", f"wrote {out}: {args.arch}, {args.num_classes} classes, {params:,} parameters, seed {args.seed}. "
                f"{RANDOM_WARNING}.")
    return 0


# --- the boundary ----------------------------------------------------------------------------------

def _one_line(e):
    """The user-facing line for an expected failure that is not a MixerError."""
    from PIL import Image

    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename is not None else ""
        return f"{where}{e.strerror or e} - check the file, its permissions and the free disk space"
    if isinstance(e, Image.DecompressionBombError):
        return f"{e} - the image is too large to classify"
    return str(e)


def _silence_stdout():
    """Point stdout at /dev/null, so that the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is no real file (captured in a test)
        pass


def _closed_streams():
    """Standard streams the caller closed (`>&-`, `2>&-`: Python sets them to None) become /dev/null, so
    that nothing fails on writing to them; -> the names of those that were closed."""
    closed = []
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))
            closed.append(name)
    return closed


def main(argv=None):
    closed = _closed_streams()
    args = build_parser().parse_args(argv)  # a bad command line: one line and exit 2 (_Parser)
    if args.command == "predict" and "stdout" in closed:
        say("error", "standard output is closed (>&-): there is nowhere to print the predictions - "
                     "redirect it to a file, or use embed --out for embeddings")
        return 1
    from PIL import Image

    try:
        if args.command == "predict":
            stop_when_the_reader_goes()
            return run_predict(args)
        if args.command == "random-checkpoint":
            return run_random_checkpoint(args)
        if args.command == "embed":
            from .embed import run_cli as run_embed
            return run_embed(args)
    except MixerError as e:
        say("error", str(e))
    except BrokenPipeError:  # e.g. piped into head, which has all it wants: stop quietly
        _silence_stdout()
        return 0
    except OutputError as e:
        _silence_stdout()
        reason = e.args[0]
        say("error", f"<stdout>: cannot write the output ({getattr(reason, 'strerror', None) or reason}) - "
                     "free some disk space, or write it elsewhere")
    except (OSError, Image.DecompressionBombError) as e:
        say("error", _one_line(e))
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())

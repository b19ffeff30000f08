"""The numpy-mixer command: numpy-mixer predict IMAGE|FOLDER [...] [--model NAME | --weights FILE] [--batch-size B]."""
import argparse
import json
import os
import sys

from .errors import MixerError
from .weights import DEFAULT_MODEL


def build_parser():
    parser = argparse.ArgumentParser(prog="numpy-mixer",
                                     description="MLP-Mixer image classification in pure NumPy.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="top-k classes (ImageNet, or digits) of images")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders (every image inside, sorted)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", default=None,
                        help=f"timm model name, fetched from the Hugging Face hub or its cache (default {DEFAULT_MODEL}), "
                             "or 'digits', the small model shipped in the package (no download)")
    source.add_argument("--weights", metavar="FILE", help="a local .safetensors checkpoint with timm's keys")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="how many classes to print (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--batch-size", type=int, default=16, metavar="B",
                   help="images per forward pass (default 16); threads follow OMP_NUM_THREADS")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress bar on stderr: auto = when stderr is a terminal and there are over "
                        f"{PROGRESS_MIN_IMAGES} images (default auto)")
    from .embed import add_cli_parser as add_embed_parser  # numpy-mixer embed: see numpy_mixer/embed.py
    add_embed_parser(sub)
    return parser


PROGRESS_MIN_IMAGES = 32  # below this a run takes seconds: no bar


def image_files(paths):
    """The given paths, each folder replaced by the image files inside it (not recursive), sorted."""
    from PIL import Image

    Image.init()
    extensions = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    files = []
    for path in paths:
        if os.path.isdir(path):
            inside = sorted(os.path.join(path, name) for name in os.listdir(path)
                            if os.path.splitext(name)[1].lower() in extensions
                            and os.path.isfile(os.path.join(path, name)))
            if not inside:
                raise MixerError(f"{path}: folder has no image files (looked for {', '.join(sorted(extensions)[:6])}, ...)")
            files.extend(inside)
        elif not os.path.exists(path):  # before the model loads (a typo should not wait for a download)
            raise MixerError(f"{path}: no such file")
        else:
            files.append(path)
    return files


def run_predict(args):
    from .model import load_model
    from .predict import iter_predict

    if args.top_k < 1:
        raise MixerError(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch_size < 1:
        raise MixerError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.weights and not os.path.isfile(args.weights):
        raise MixerError(f"{args.weights}: no such file (--weights takes a local .safetensors file; "
                         "use --model for a name)")
    images = image_files(args.images)
    progress = {"on": True, "off": False}.get(args.progress,
                                               sys.stderr.isatty() and len(images) > PROGRESS_MIN_IMAGES)
    model = load_model(args.weights or args.model or DEFAULT_MODEL)
    results = iter_predict(images, top_k=args.top_k, model=model, batch_size=args.batch_size, progress=progress)
    if args.json:
        print(json.dumps([{"image": image, "predictions": [{"label": label, "probability": prob}
                                                            for label, prob in top]}
                          for image, top in zip(images, results)], indent=2))
        return
    for image, top in zip(images, results):
        lines = [image] + [f"  {prob:7.2%}  {label}" for label, prob in top]
        print("\n".join(lines), flush=progress)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.command == "predict":
            run_predict(args)
        elif args.command == "embed":
            from .embed import run_cli as run_embed
            run_embed(args)
    except MixerError as e:
        print(f"numpy-mixer: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

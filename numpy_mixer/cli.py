"""The numpy-mixer command: numpy-mixer predict IMAGE [IMAGE ...] [--model NAME | --weights FILE]."""
import argparse
import json
import sys

from .errors import MixerError
from .weights import DEFAULT_MODEL


def build_parser():
    parser = argparse.ArgumentParser(prog="numpy-mixer",
                                     description="MLP-Mixer image classification in pure NumPy.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="top-k ImageNet classes of images")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", default=None,
                        help=f"timm model name, fetched from the Hugging Face hub or its cache (default {DEFAULT_MODEL})")
    source.add_argument("--weights", metavar="FILE", help="a local .safetensors checkpoint with timm's keys")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="how many classes to print (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def run_predict(args):
    from .model import load_model
    from .predict import predict

    if args.top_k < 1:
        raise MixerError(f"--top-k must be at least 1, got {args.top_k}")
    model = load_model(args.weights or args.model or DEFAULT_MODEL)
    results = predict(list(args.images), top_k=args.top_k, model=model)
    if args.json:
        print(json.dumps([{"image": image, "predictions": [{"label": label, "probability": prob}
                                                            for label, prob in top]}
                          for image, top in zip(args.images, results)], indent=2))
        return
    for image, top in zip(args.images, results):
        print(image)
        for label, prob in top:
            print(f"  {prob:7.2%}  {label}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.command == "predict":
            run_predict(args)
    except MixerError as e:
        print(f"numpy-mixer: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the shipped digits Mixer in NumPy and write numpy_mixer/data/digits.safetensors.

    python tools/train_digits.py                 # reproduces the shipped file from seed 0
    python tools/train_digits.py --tune          # the same recipe scored on a validation split of the
                                                 # training set (how the hyperparameters were chosen)

Data: scikit-learn's load_digits (1,797 8x8 digits, bundled with sklearn), a stratified 80/20 split
(split seed 0): 1,437 to train, 360 held out and never used for a decision. Each 8x8 digit is drawn as
dark ink on white (numpy_mixer.train.digit_image) and goes through numpy_mixer.preprocess with the
digits cfg, i.e. Pillow's bilinear resize 8x8 -> 16x16 and Normalize(0.7, 0.32): exactly what a
user's PNG goes through. Training augmentation: random shifts of up to 2 pixels (of 16).
The model: patch 4 on 16x16 (16 tokens), 4 blocks of width 64, token MLP 32, channel MLP 256,
RGB input with the gray replicated, 10 classes.
"""
import argparse
import json
import os
import sys
import time


from numpy_mixer.checkpoint import save_checkpoint
from numpy_mixer.model import MlpMixer
from numpy_mixer.train import accuracy, digits_data, init_state_dict, predict_logits, random_shift, train
from numpy_mixer.weights import BUNDLED, MixerConfig

CONFIG = MixerConfig(patch_size=4, img_size=16, in_chans=3, embed_dim=64, depth=4, tokens_dim=32,
                     channels_dim=256, num_classes=10)
RECIPE = dict(epochs=40, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_epochs=2, min_lr=1e-5, max_shift=2)
OUT = os.path.join(os.path.dirname(__file__), "..", "numpy_mixer", "data", "digits.safetensors")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="init, shuffling and augmentation seed (default 0)")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--out", default=OUT, help="where to write the checkpoint")
    parser.add_argument("--tune", action="store_true",
                        help="score on a validation split of the training set; write nothing")
    args = parser.parse_args(argv)

    cfg = dict(BUNDLED["digits"], input_size=(CONFIG.in_chans, CONFIG.img_size, CONFIG.img_size))
    x_train, y_train, x_test, y_test, _ = digits_data(cfg)
    if args.tune:  # never look at the held-out 360 while choosing the recipe
        from sklearn.model_selection import train_test_split
        x_train, x_test, y_train, y_test = train_test_split(x_train, y_train, test_size=0.2, random_state=1,
                                                            stratify=y_train)
    model = MlpMixer(init_state_dict(CONFIG, seed=args.seed), dict(cfg, name="digits"), "digits")
    print(model)
    background = (1 - cfg["mean"][0]) / cfg["std"][0]  # white paper after Normalize
    start, cpu_start = time.perf_counter(), time.process_time()
    history = train(model, x_train, y_train, x_test, y_test, epochs=args.epochs, batch_size=RECIPE["batch_size"],
                    lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"], warmup_epochs=RECIPE["warmup_epochs"],
                    min_lr=RECIPE["min_lr"], seed=args.seed, augment=random_shift(RECIPE["max_shift"], background))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    acc = accuracy(predict_logits(model, x_test), y_test)
    split = "validation (part of train)" if args.tune else "held-out"
    print(f"{split} accuracy {acc:.4f} ({round(acc * len(y_test))}/{len(y_test)}), "
          f"training {seconds:.0f} s ({cpu_seconds:.0f} s CPU), final train loss {history['train_loss'][-1]:.4f}")
    if args.tune:
        return 0
    metrics = {"heldout_accuracy": acc, "heldout_size": len(y_test), "train_size": len(y_train),
               "train_seconds": round(seconds, 1),
               "train_cpu_seconds": round(cpu_seconds, 1), "seed": args.seed, "epochs": args.epochs,
               "recipe": RECIPE, "cpu_count": os.cpu_count()}
    curves = {k: history[k] for k in ("train_loss", "train_acc", "val_acc")}
    save_checkpoint(model.state_dict(), args.out,
                    metadata={"metrics": json.dumps(metrics), "history": json.dumps(curves),
                              "trained_by": "tools/train_digits.py"})
    print(f"wrote {os.path.normpath(args.out)} ({os.path.getsize(args.out) / 1e3:.0f} kB): {json.dumps(metrics)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

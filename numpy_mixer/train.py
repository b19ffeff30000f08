"""Training in NumPy: timm's init, AdamW, warmup + cosine, mini-batches; a linear probe; the digits data.

    model = MlpMixer(init_state_dict(config, seed=0), pretrained_cfg)      # fresh weights, timm's init
    history = train(model, x, y, x_val, y_val, epochs=40, lr=2e-3)          # every weight, AdamW
    history = linear_probe(model, x, y, num_classes=10)                     # a new head on frozen features

Gradients come from numpy_mixer.backward; everything stays float32 (the dtype of the weights).
"""
import math
import time

import numpy as np

from . import backward, fast, layers
from .errors import MixerError
from .model import flatten, nest
from .weights import expected_shapes

# --- initial weights ---------------------------------------------------------------------------------


def init_state_dict(config, seed=0, dtype=np.float32):
    """Fresh weights with timm's keys, drawn as timm's MlpMixer init does (timm/models/mlp_mixer.py,
    _init_weights): linear xavier-uniform, MLP biases N(0, 1e-6), stem conv lecun-normal with zero bias,
    LayerNorm 1 and 0, head zero."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in expected_shapes(config).items():
        if key.startswith("head."):
            value = np.zeros(shape)  # timm zero-initialises the classifier
        elif key == "stem.proj.weight":  # lecun normal, std sqrt(1 / fan_in); clipped at +-2 (timm truncates)
            std = math.sqrt(1.0 / np.prod(shape[1:])) / 0.87962566103423978  # std of N(0,1) cut at +-2
            value = np.clip(rng.standard_normal(shape), -2, 2) * std
        elif key.endswith("weight") and len(shape) == 2:  # xavier uniform: U(+-sqrt(6 / (fan_in + fan_out)))
            bound = math.sqrt(6.0 / (shape[0] + shape[1]))
            value = rng.uniform(-bound, bound, shape)
        elif "norm" in key:
            value = np.ones(shape) if key.endswith("weight") else np.zeros(shape)
        elif "mlp" in key:  # MLP biases
            value = 1e-6 * rng.standard_normal(shape)
        else:  # stem bias
            value = np.zeros(shape)
        state[key] = value.astype(dtype)
    return state


# --- optimiser and schedule ------------------------------------------------------------------------------


def cosine_lr(step, total_steps, lr, warmup_steps=0, min_lr=0.0):
    """Linear warmup from 0 to lr over warmup_steps, then cosine decay to min_lr at total_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


class AdamW:
    """torch.optim.AdamW (decoupled weight decay), in place on nested params.

    Weight decay applies to matrices and conv kernels only, not to biases and LayerNorm (ndim 1),
    as timm's optimizer factory does by default.
    """

    def __init__(self, params, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05):
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.step_count = 0
        self.m = {k: np.zeros_like(v) for k, v in flatten(params).items()}  # first moment
        self.v = {k: np.zeros_like(v) for k, v in flatten(params).items()}  # second moment

    def step(self, params, grads, lr):
        """One update of every array in params (in place), with learning rate lr."""
        self.step_count += 1
        beta1, beta2 = self.betas
        correction1 = 1 - beta1 ** self.step_count  # bias corrections for the zero-initialised moments
        correction2 = 1 - beta2 ** self.step_count
        flat_grads = flatten(grads)
        for key, p in flatten(params).items():
            g = flat_grads[key]
            m, v = self.m[key], self.v[key]
            m *= beta1
            m += (1 - beta1) * g  # m = beta1 m + (1 - beta1) g
            v *= beta2
            v += (1 - beta2) * g * g  # v = beta2 v + (1 - beta2) g^2
            if p.ndim > 1 and self.weight_decay:
                p *= 1 - lr * self.weight_decay  # decoupled decay: shrink the weight, not the gradient
            denom = np.sqrt(v) / math.sqrt(correction2) + self.eps
            p -= (lr / correction1) * m / denom


# --- the training loop -----------------------------------------------------------------------------------


def fit(params, loss_and_grads, predict, x, y, x_val=None, y_val=None, epochs=10, batch_size=64, lr=1e-3,
        weight_decay=0.05, warmup_epochs=1, min_lr=0.0, seed=0, augment=None, progress=True, desc="train",
        blas_threads=1):
    """Mini-batch AdamW on params (nested arrays, updated in place) with a warmup + cosine schedule.

    loss_and_grads(params, xb, yb) -> (loss, logits, grads); predict(params, x) -> logits;
    augment(xb, rng) -> xb, applied to training batches only.
    blas_threads: the matmuls of a small model's mini-batch are small, and one BLAS thread is as fast
    as two; with more, OpenBLAS spin-waits and runs ~50x slower when other processes share the cores.
    Returns the history: per step "loss" and "lr"; per epoch "train_loss", "train_acc", "val_acc".
    """
    from tqdm.auto import tqdm  # comes with huggingface_hub

    rng = np.random.default_rng(seed)
    optimizer = AdamW(params, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total_steps = epochs * steps_per_epoch
    history = {"loss": [], "lr": [], "train_loss": [], "train_acc": [], "val_acc": [], "epoch_time_s": []}
    step = 0
    with fast.blas_threads(blas_threads), \
            tqdm(total=total_steps, desc=desc, disable=not progress, leave=False) as bar:
        for epoch in range(epochs):
            start = time.perf_counter()
            order = rng.permutation(len(x))
            losses, correct = [], 0
            for first in range(0, len(x), batch_size):
                batch = order[first:first + batch_size]
                xb, yb = x[batch], y[batch]
                if augment is not None:
                    xb = augment(xb, rng)
                step_lr = cosine_lr(step, total_steps, lr, warmup_epochs * steps_per_epoch, min_lr)
                loss, logits, grads = loss_and_grads(params, xb, yb)
                optimizer.step(params, grads, step_lr)
                losses.append(float(loss))
                correct += int((logits.argmax(axis=-1) == yb).sum())
                history["loss"].append(float(loss))
                history["lr"].append(step_lr)
                step += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}")
            history["train_loss"].append(float(np.mean(losses)))
            history["train_acc"].append(correct / len(x))  # over the epoch, as the weights moved
            if x_val is not None:
                history["val_acc"].append(accuracy(predict(params, x_val), y_val))
                bar.set_postfix(epoch=epoch + 1, loss=f"{history['train_loss'][-1]:.3f}",
                                val_acc=f"{history['val_acc'][-1]:.3f}")
            history["epoch_time_s"].append(time.perf_counter() - start)
    return history


def accuracy(logits, labels):
    """Fraction of rows whose largest logit is the label. [B, K], [B] -> float"""
    return float((np.asarray(logits).argmax(axis=-1) == labels).mean())


def _writable(model):
    """Loaded weights are read-only memory maps: give the model its own float copies to train."""
    model.params = nest({k: np.array(v, model.dtype) for k, v in model.state_dict().items()})


def predict_logits(model, x, batch_size=256):
    """model(x) in batches, without the input checks. [B, 3, H, W] -> [B, K]"""
    P = model.config.patch_size
    return np.concatenate([layers.forward(x[i:i + batch_size], model.params, P)
                           for i in range(0, len(x), batch_size)])


def train(model, x, y, x_val=None, y_val=None, epochs=40, batch_size=64, lr=2e-3, weight_decay=0.05,
          warmup_epochs=2, min_lr=1e-5, seed=0, augment=None, progress=True):
    """Train every weight of an MlpMixer with a head on images x [B, 3, H, W] and labels y [B].

    The model's weights are replaced by trained ones (float32 copies); returns the history (see fit).
    """
    if model.num_classes == 0:
        raise MixerError("the model has no head: call model.reset_classifier(num_classes) before train()")
    x, y = model._cast(model._check_input(x)), _check_labels(y, model.num_classes, len(x))
    if x_val is not None:
        x_val, y_val = model._cast(model._check_input(x_val)), _check_labels(y_val, model.num_classes, len(x_val))
    _writable(model)
    P = model.config.patch_size
    return fit(model.params,
               loss_and_grads=lambda params, xb, yb: backward.loss_and_grads(params, xb, yb, P),
               predict=lambda params, xv: predict_logits(model, xv),
               x=x, y=y, x_val=x_val, y_val=y_val, epochs=epochs, batch_size=batch_size, lr=lr,
               weight_decay=weight_decay, warmup_epochs=warmup_epochs, min_lr=min_lr, seed=seed, augment=augment,
               progress=progress, desc="train")


def _check_labels(y, num_classes, count, fix="give the model a head of that many classes (reset_classifier)"):
    """Integer class indices in [0, num_classes), one per image; fix: what to do when they run past it."""
    y = np.asarray(y)
    if y.shape != (count,) or y.dtype.kind not in "iu":
        raise MixerError(f"labels have shape {y.shape} and dtype {y.dtype}; expected {count} integer class indices")
    if count and (y.min() < 0 or y.max() >= num_classes):
        raise MixerError(f"labels run from {y.min()} to {y.max()}, but the head has {num_classes} classes "
                         f"(0 to {num_classes - 1}); {fix}")
    return y


# --- linear probe: a new head on the frozen pre-logits --------------------------------------------------


def embeddings(model, x, batch_size=64, progress=False):
    """Pre-logits of any Mixer (pooled, normalised tokens; the head's input). [B, 3, H, W] -> [B, C]"""
    from tqdm.auto import tqdm

    chunks = []
    for i in tqdm(range(0, len(x), batch_size), desc="embeddings", disable=not progress, leave=False):
        chunks.append(model.forward_head(model.forward_features(x[i:i + batch_size]), pre_logits=True))
    return np.concatenate(chunks)


def head_loss_and_grads(head_params, features, labels):
    """Cross-entropy of a linear head on features, and its gradient. [B, C], [B] -> (loss, logits, grads)"""
    logits, cache = backward.head_forward(features, **head_params)  # [B, C] -> [B, K]
    loss, loss_cache = backward.softmax_cross_entropy_forward(logits, labels)
    _, grads = backward.head_backward(backward.softmax_cross_entropy_backward(loss_cache), cache)
    return loss, logits, grads


def fit_head(features, labels, num_classes, features_val=None, labels_val=None, epochs=100, batch_size=64,
             lr=1e-2, weight_decay=1e-4, warmup_epochs=0, seed=0, progress=True):
    """A linear classifier on fixed features, trained with AdamW from zero. -> ({"weight", "bias"}, history)

    features [B, C], labels [B] integers in [0, num_classes).
    """
    features = np.asarray(features)
    C = features.shape[1]
    head_params = {"weight": np.zeros((num_classes, C), features.dtype),
                   "bias": np.zeros((num_classes,), features.dtype)}
    fix = "pass num_classes as the number of classes (one more than the largest label)"
    labels = _check_labels(labels, num_classes, len(features), fix)
    if features_val is not None:
        labels_val = _check_labels(labels_val, num_classes, len(features_val), fix)
    history = fit(head_params, loss_and_grads=head_loss_and_grads,
                  predict=lambda p, f: backward.head_forward(f, **p)[0],
                  x=features, y=labels, x_val=features_val, y_val=labels_val, epochs=epochs,
                  batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, min_lr=0.0,
                  seed=seed, progress=progress, desc="linear probe")
    return head_params, history


def linear_probe(model, x, y, num_classes=None, labels=None, x_val=None, y_val=None, **fit_kwargs):
    """Give any loaded Mixer a new head trained on its frozen pre-logits (timm's reset_classifier + fit).

    x: images [B, 3, H, W] as model.preprocess makes them; y: integer labels; labels: optional class names
    for predict; num_classes defaults to len(labels), else max(y) + 1. The trunk is not changed.
    Returns the history (see fit).
    """
    y = np.asarray(y)
    num_classes = num_classes or (len(labels) if labels is not None else int(y.max()) + 1)
    if labels is not None and len(labels) != num_classes:
        raise MixerError(f"{len(labels)} class names for a head of {num_classes} classes; pass one name per class")
    features = embeddings(model, x, progress=fit_kwargs.get("progress", True))  # [B, C]
    features_val = None if x_val is None else embeddings(model, x_val)
    head_params, history = fit_head(features, y, num_classes, features_val, y_val, **fit_kwargs)
    model.reset_classifier(num_classes)
    model.params["head"] = head_params
    if labels is not None:
        model.pretrained_cfg["labels"] = list(labels)
    return history


# --- scikit-learn's 8x8 digits as images ---------------------------------------------------------------


def digit_image(values):
    """An 8x8 digit of sklearn's load_digits (0 = paper, 16 = ink) -> the uint8 picture a user would draw:
    dark ink on a white background. [8, 8] -> [8, 8] uint8"""
    ink = np.asarray(values, np.float64) / 16.0
    return np.round(255 * (1 - ink)).astype(np.uint8)


def _sklearn():
    """(load_digits, train_test_split) from scikit-learn, or a MixerError saying how to install it."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise MixerError("this needs scikit-learn, which is not installed: pip install scikit-learn (the [train] "
                         "extra)") from None
    return load_digits, train_test_split


def digits_data(cfg, test_size=0.2, split_seed=0):
    """sklearn's digits, preprocessed exactly as a user's PNG is, with a stratified held-out split.

    cfg: the digits model's pretrained_cfg (input size, interpolation, mean, std, crop_pct).
    Each 8x8 digit goes through numpy_mixer.preprocess.preprocess as an 8x8 image, so the 8x8 -> S x S
    upsampling is the cfg's interpolation (Pillow), as for any picture given to predict.
    Returns (x_train, y_train, x_test, y_test, images_test): x [B, 3, S, S] float32, images uint8 [B, 8, 8].
    """
    load_digits, train_test_split = _sklearn()
    from .preprocess import preprocess

    digits = load_digits()
    images = np.stack([digit_image(v) for v in digits.images])  # [1797, 8, 8] uint8
    x = np.stack([preprocess(img, cfg) for img in images])  # [1797, 3, S, S] float32
    index_train, index_test = train_test_split(np.arange(len(x)), test_size=test_size, random_state=split_seed,
                                               stratify=digits.target)
    return x[index_train], digits.target[index_train], x[index_test], digits.target[index_test], images[index_test]


def sklearn_digit_pictures(test_size=0.2, split_seed=0):
    """sklearn's 1,797 digits as dark-on-light uint8 pictures (digit_image), with a stratified held-out split.
    -> (images_train [B, 8, 8] uint8, y_train [B], images_test, y_test)"""
    load_digits, train_test_split = _sklearn()
    digits = load_digits()
    images = np.stack([digit_image(v) for v in digits.images])  # [1797, 8, 8] uint8
    index_train, index_test = train_test_split(np.arange(len(images)), test_size=test_size, random_state=split_seed,
                                               stratify=digits.target)
    return images[index_train], digits.target[index_train], images[index_test], digits.target[index_test]


def preprocess_all(pictures, cfg):
    """Pictures (uint8 [B, h, w] or [B, h, w, 3]) through the model's preprocessing. -> [B, 3, S, S] float32"""
    from .preprocess import preprocess

    return np.stack([preprocess(p, cfg) for p in pictures])


# --- digits as people draw them: the training pictures and their augmentation ---------------------------


def placed_sklearn_pictures(images, copies, rng):
    """Each sklearn digit `copies` times as a glyph placed like a drawn one (numpy_mixer.drawn_digits.place):
    any size, position and small rotation, thinner or bolder, either polarity, a little colour and noise.
    uint8 [B, 8, 8] -> uint8 [B * copies, CANVAS, CANVAS, 3] (digit-major: copies of image 0 first)"""
    from PIL import Image

    from . import drawn_digits as dd

    out = []
    for img in images:
        glyph = Image.fromarray(255 - img).resize((32, 32), Image.Resampling.BILINEAR)  # ink 255
        for _ in range(copies):
            out.append(dd.paint(dd.place(dd.bolden(glyph, rng), rng), rng))
    return np.stack(out)


def digits_training_set(cfg, drawn=16000, placed_copies=4, full_copies=2, seed=0):
    """The digits model's training pictures, preprocessed: sklearn's training split as scanned (full frame,
    `full_copies` times) and placed anywhere (`placed_copies` times), and `drawn` font and pen pictures of
    the training fonts and pens (numpy_mixer.drawn_digits). Polarity of the full-frame scans is left to the
    augmentation (random_polarity). -> (x [B, 3, S, S] float32, y [B])"""
    from .drawn_digits import drawn_digits

    rng = np.random.default_rng(seed)
    images, labels, _, _ = sklearn_digit_pictures()
    pictures, drawn_labels = drawn_digits(drawn, seed=seed, split="train")
    x = np.concatenate([np.tile(preprocess_all(images, cfg), (full_copies, 1, 1, 1)),
                        preprocess_all(placed_sklearn_pictures(images, placed_copies, rng), cfg),
                        preprocess_all(pictures, cfg)])
    y = np.concatenate([np.tile(labels, full_copies), np.repeat(labels, placed_copies), drawn_labels])
    return x, y


def invert(x, cfg):
    """The preprocessed negative: what 255 - picture gives. Normalize is affine, so
    (1 - p - mean) / std = (1 - 2 mean) / std - x. [..., 3, S, S] -> same"""
    mean = np.asarray(cfg["mean"], np.float32)[:, None, None]
    std = np.asarray(cfg["std"], np.float32)[:, None, None]
    return (1 - 2 * mean) / std - x


def random_polarity(cfg, max_shift=0):
    """An augment(xb, rng) for fit: each image turned negative with probability 1/2, and moved by up to
    max_shift pixels, the border repeated (the paper may be any colour). [B, 3, S, S] -> [B, 3, S, S]"""

    def augment(xb, rng):
        B, _, S, _ = xb.shape
        flip = rng.random(B) < 0.5
        xb = np.where(flip[:, None, None, None], invert(xb, cfg), xb).astype(xb.dtype)
        if max_shift:
            m = max_shift
            padded = np.pad(xb, ((0, 0), (0, 0), (m, m), (m, m)), mode="edge")
            dy, dx = rng.integers(0, 2 * m + 1, size=(2, B))
            xb = np.stack([padded[i, :, dy[i]:dy[i] + S, dx[i]:dx[i] + S] for i in range(B)])
        return xb

    return augment


def random_shift(max_shift, fill):
    """An augment(xb, rng) for fit: move each image by up to max_shift pixels, filling with `fill`
    (the normalised background). [B, 3, S, S] -> [B, 3, S, S]"""

    def augment(xb, rng):
        B, _, S, _ = xb.shape
        padded = np.pad(xb, ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift)),
                        constant_values=fill)
        dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, B))
        return np.stack([padded[i, :, dy[i]:dy[i] + S, dx[i]:dx[i] + S] for i in range(B)])

    return augment


def training_record(name_or_path="digits"):
    """What tools/train_digits.py stored beside the weights: ({metrics}, {per-epoch curves})."""
    import json

    from .weights import read_safetensors, resolve

    metadata = read_safetensors(resolve(name_or_path)[0]).metadata  # the header, checked as load_model checks it
    return json.loads(metadata.get("metrics", "{}")), json.loads(metadata.get("history", "{}"))


# --- the digits model's held-out sets -------------------------------------------------------------------

DRAWN_TEST = dict(count=1000, seed=2024)  # the held-out synthetic set: fonts and a pen never trained on


def digits_heldout_sets(cfg):
    """Every held-out set the digits model is scored on, preprocessed with cfg: name -> (x [B, 3, S, S], y [B]).

    sklearn's 360 held-out digits as dark ink on light paper and as light on dark (the 8x8 arrays turned
    into images directly, ink = high values, as MNIST looks); and numpy_mixer.drawn_digits' test split,
    regenerated from DRAWN_TEST: held-out fonts and the held-out pen, each in either polarity.
    """
    from .drawn_digits import drawn_digits

    _, _, images, labels = sklearn_digit_pictures()
    pictures, drawn_labels = drawn_digits(DRAWN_TEST["count"], seed=DRAWN_TEST["seed"], split="test")
    x_drawn = preprocess_all(pictures, cfg)
    font = np.arange(len(drawn_labels)) % 20 < 10  # drawn_digits alternates fonts and pens in blocks of ten
    return {"sklearn dark on light": (preprocess_all(images, cfg), labels),
            "sklearn light on dark": (preprocess_all(255 - images, cfg), labels),
            "drawn: fonts and pens": (x_drawn, drawn_labels),
            "drawn: fonts": (x_drawn[font], drawn_labels[font]),
            "drawn: pens": (x_drawn[~font], drawn_labels[~font])}

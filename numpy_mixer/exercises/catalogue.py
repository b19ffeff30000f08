"""The exercises: statement, cases (fixture keys), tolerance and the classic mistakes of each step.

A case calls the learner's function on fixture inputs (positionally, in the stub's order) and
compares with timm's answer saved under case.out. A mistake is the same function written wrong in
one known way (see mistakes.py), with the hint that names it.
"""
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import mistakes as M


@dataclass
class Case:
    name: str
    describe: str  # shown when this case fails: "x [1, 196, 768], full-size mixer_b16 block"
    args: Callable  # store -> tuple of arguments
    out: str  # fixture key of timm's answer


@dataclass
class Exercise:
    name: str
    step: str  # the walkthrough notebook it belongs to
    summary: str
    statement: str
    cases: list
    rtol: float
    atol: float
    mistakes: list = field(default_factory=list)  # [(hint, fn with the exercise's signature)]
    error_hint: str = ""  # when the function raises a shape error and no case shows a known mistake
    diagnose: Callable = None  # (out, expected, args) -> hint or None: mistakes that are a pattern, not a variant


# --- hints (tests assert on these words) ------------------------------------------------------------
TANH_GELU = ("tanh GELU instead of erf: timm's Mixer uses the exact GELU, x/2 * (1 + erf(x / sqrt(2))) "
             "(torch.nn.GELU(), approximate='none'), not 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))")
SIGMOID_GELU = "the sigmoid approximation x * sigmoid(1.702 x) instead of the exact erf GELU"
NO_SQRT2 = "erf(x) instead of erf(x / sqrt(2)) inside GELU"
NO_HALF = "a missing 1/2: GELU is x/2 * (1 + erf(x / sqrt(2)))"
RELU = "ReLU instead of GELU"
NO_ACT = "a missing activation between fc1 and fc2 (GELU)"
EPS_1E5 = "LayerNorm eps 1e-5 (PyTorch's default); timm's Mixer uses LayerNorm(eps=1e-6)"
NO_EPS = "LayerNorm without eps: (x - mean) / sqrt(var + 1e-6)"
EPS_OUTSIDE = "eps outside the square root, (x - mean) / (std + eps); torch computes (x - mean) / sqrt(var + eps)"
UNBIASED = "unbiased variance (divide by C-1, ddof=1); torch's LayerNorm divides by C (biased)"
WRONG_AXIS = "LayerNorm over the wrong axis; normalise each token over its own C channels: mean and var over axis=-1"
NO_AFFINE = "LayerNorm without its weight and bias: ... * weight + bias"
NO_TRANSPOSES = ("token mixing without the transposes: mlp_tokens acts on the token axis, so swap "
                 "[B, N, C] -> [B, C, N] before it and back after (x.swapaxes(1, 2))")
RESHAPE_NOT_TRANSPOSE = ("reshape instead of transpose: x.reshape(B, C, N) keeps the memory order and "
                         "scrambles tokens and channels; swap the axes with x.swapaxes(1, 2)")
NORM_AFTER_TRANSPOSE = ("LayerNorm applied after the transpose, over the tokens: normalise each token over "
                        "its channels first ([B, N, C], axis=-1), then transpose")
W_NOT_WT = ("W instead of W.T: torch's Linear stores weight as [out, in], so it is x @ weight.T + bias "
            "(in the stem: weight.reshape(C, -1).T)")
NO_BIAS = "a missing bias: x @ weight.T + bias"
NO_RESIDUAL = "a missing residual: the output is x + mixing(x), not mixing(x)"
NORMED_RESIDUAL = "the residual added to the normalised input: it is x + mlp(norm(x)), not norm(x) + mlp(norm(x))"
CHANNEL_AS_TOKEN = "mlp_channels applied across the tokens: channel mixing acts on the last axis, C, no transpose"
CHANNEL_FIRST = "channel mixing before token mixing: timm's MixerBlock mixes tokens first"
PARALLEL = "token and channel mixing both applied to the block's input; channel mixing takes token mixing's output"
SWAPPED_NORMS = "norm1 and norm2 swapped: norm1 goes with mlp_tokens, norm2 with mlp_channels"
HWC_PATCHES = ("patches flattened in (h, w, c) order; the conv weight [C, 3, P, P] is flattened (c, h, w), so "
               "each patch must be [3, P, P] before flattening: transpose to [B, G, G, 3, P, P]")
CWH_PATCHES = "each patch flattened in (c, w, h) order: rows and columns inside the patch are swapped"
COLUMN_TOKENS = "tokens in column order; timm numbers patches row by row (left to right, then down)"
RESHAPE_PATCHES = ("a plain reshape to [B, N, 3*P*P]: that cuts the image into rows, not P x P tiles; "
                   "reshape to [B, 3, G, P, G, P] and transpose first")
MAX_POOL = "max instead of mean pooling over the tokens; timm's Mixer averages: x.mean(axis=1)"
SUM_POOL = "sum instead of mean over the tokens"
FIRST_TOKEN = "the first token instead of the mean over all tokens (Mixer has no class token)"
CHANNEL_POOL = "the mean over the wrong axis (channels); pool over the tokens, axis=1"
NO_FINAL_NORM = "a missing final LayerNorm (params['norm']) after the last block"
BILINEAR = ("the wrong resize interpolation (bilinear); mixer_b16_224.goog_in21k_ft_in1k uses bicubic "
            "(PIL Image.Resampling.BICUBIC)")
NEAREST = "the wrong resize interpolation (nearest); this model uses bicubic"
SQUASH = ("no centre crop: the image was resized straight to 224 x 224; resize the shorter side to "
          "256 (= 224 / 0.875, crop_pct), then cut the central 224 x 224")
SHORT_SIDE_224 = ("crop_pct ignored: shorter side resized to 224 then cropped; resize it to 256 "
                  "(= 224 / crop_pct 0.875), then centre-crop 224")
IMAGENET_NORM = "ImageNet mean/std; this model (goog) uses mean = std = (0.5, 0.5, 0.5), i.e. x / 127.5 - 1"
NO_NORMALIZE = "no normalisation: (x / 255 - 0.5) / 0.5"
NO_SCALE = "pixels not divided by 255 before normalising"
HWC_IMAGE = "the image left as [H, W, 3]; the model takes [3, H, W]: transpose(2, 0, 1)"
FLOAT64 = ("a float64 upcast: the values are right but the dtype is float64; keep float32 end to end (a float64 "
           "Python scalar in np.asarray, np.float64 constants, x / 255.0 on uint8, or astype(float) upcast silently)")


def _keys(exercise, case, *names):
    return lambda s: tuple(s[f"{exercise}/{case}/{n}"] for n in names)


def _params(exercise, case, *names):
    """x, then the nested weights named `names`, from the fixtures."""
    def args(s):
        p = s.params(f"{exercise}/{case}")
        return (s[f"{exercise}/{case}/x"],) + tuple(p[n] for n in names)
    return args


def _b16(x_key, *names):
    """x from another fixture, weights from the regenerated full-size block."""
    return lambda s: (s[x_key],) + tuple(s.b16["blocks"][0][n] for n in names)


def _erf_pattern(out, expected, args):
    (x,) = args
    close = np.isclose(out, expected, rtol=1e-5, atol=1e-6)
    if close[x >= 0].all() and not close[x < 0].all():
        return ("right for x >= 0, wrong for x < 0: erf is odd, erf(-x) = -erf(x); most formulas "
                "(Abramowitz & Stegun 7.1.26) hold for x >= 0 only, so use erf(|x|) with the sign of x")
    err = np.abs(out.astype(np.float64) - expected).max()
    if err < 1e-3:
        return (f"an approximation that is not accurate enough (max error {err:.1e}; torch's erf is within 1e-7): "
                "use A&S 7.1.26 (error 1.5e-7) or more terms")
    return None


# --- the exercises, in the walkthrough's order ----------------------------------------------------

_SMALL_X = "[2, 16, 24] (N=16 tokens, C=24 channels)"
_SQUARE_X = "[2, 16, 16] (N = C = 16)"
_B16_X = "[1, 196, 768], the full-size mixer_b16 block"

EXERCISES = [
    Exercise(
        "patchify", "1 patches", "cut an image into P x P patches, one row per token",
        """\
patchify(x, patch_size=16): cut images into non-overlapping P x P patches, one token per patch.

    x: [B, 3, H, W] float32  ->  [B, N, 3*P*P] float32, N = (H/P) * (W/P)

Tokens are numbered row by row (left to right, then down), as timm's conv stem does.
Each patch is flattened in the order the conv kernel `stem.proj.weight` [C, 3, P, P] is stored:
channel first, then row, then column (c, h, w). So token n, value (c*P + i)*P + j is
x[b, c, row*P + i, col*P + j] with row, col = divmod(n, W/P).
Hint: one reshape to [B, 3, H/P, P, W/P, P], one transpose, one reshape. No loops needed.
Checked against torch.nn.functional.unfold on a 8 x 12 image (P=4, a 2 x 3 grid) and a 16 x 16 one.""",
        [Case("small", "x [2, 3, 8, 12], P=4", lambda s: (s["patchify/small/x"], 4), "patchify/small/out"),
         Case("square", "x [1, 3, 16, 16], P=4", lambda s: (s["patchify/square/x"], 4), "patchify/square/out")],
        rtol=0, atol=0,
        mistakes=[(HWC_PATCHES, lambda x, P=16: M.patchify(x, P, order="hwc")),
                  (CWH_PATCHES, lambda x, P=16: M.patchify(x, P, order="cwh")),
                  (COLUMN_TOKENS, lambda x, P=16: M.patchify(x, P, grid="columns")),
                  (RESHAPE_PATCHES, lambda x, P=16: M.patchify(x, P, method="reshape"))]),
    Exercise(
        "stem", "1 patches", "patch embedding: the stride-P conv as patchify + one matmul",
        """\
stem(x, proj, patch_size=16): the patch embedding, timm's `stem.proj`, a P x P conv with stride P.

    x: [B, 3, H, W] float32, proj = {"weight": [C, 3, P, P], "bias": [C]}  ->  [B, N, C] float32

A conv whose stride equals its kernel size sees each patch once: it is patchify(x, P) (each
patch flattened (c, h, w)) times the kernel flattened to [C, 3*P*P], transposed, plus the bias.
torch stores weights as [out, in]: y = patches @ weight.reshape(C, -1).T + bias.
Checked against timm's PatchEmbed on a small image (C = 48 = 3*4*4) and on a full 224 x 224
image with mixer_b16's stem (C = 768 = 3*16*16: both square, so W instead of W.T runs and is wrong).""",
        [Case("small", "x [2, 3, 8, 12], P=4, C=48",
              lambda s: (s["stem/small/x"], s.params("stem/small")["proj"], 4), "stem/small/out"),
         Case("b16", "x [1, 3, 224, 224], the full-size mixer_b16 stem",
              lambda s: (s["preprocess/landscape/out"][None], s.b16["stem"]["proj"], 16), "stem/b16/out")],
        rtol=2e-5, atol=2e-5,
        mistakes=[(W_NOT_WT, lambda x, proj, P=16: M.stem(x, proj, P, weight="no_transpose")),
                  (HWC_PATCHES, lambda x, proj, P=16: M.stem(x, proj, P, order="hwc")),
                  (CWH_PATCHES, lambda x, proj, P=16: M.stem(x, proj, P, order="cwh")),
                  (COLUMN_TOKENS, lambda x, proj, P=16: M.stem(x, proj, P, grid="columns")),
                  (RESHAPE_PATCHES, lambda x, proj, P=16: M.stem(x, proj, P, method="reshape")),
                  (NO_BIAS, lambda x, proj, P=16: M.stem(x, proj, P, use_bias=False))],
        error_hint="check each matmul's shapes: patches [B, N, 3*P*P] @ weight.reshape(C, -1).T [3*P*P, C]"),
    Exercise(
        "layer_norm", "2 LayerNorm and GELU", "LayerNorm over the channels, as torch (eps 1e-6, biased variance)",
        """\
layer_norm(x, weight, bias, eps=1e-6): normalise each token over its channels, then scale and shift.

    x: [..., C], weight, bias: [C]  ->  [..., C], same dtype (float32)

    mean = mean of x over the last axis;  var = mean of (x - mean)^2 over the last axis
    y = (x - mean) / sqrt(var + eps) * weight + bias

Exactly torch.nn.LayerNorm(C, eps=1e-6), which timm's Mixer uses: the BIASED variance (divide by C,
not C-1), eps INSIDE the square root, and eps = 1e-6 (PyTorch's default is 1e-5). Keepdims helps.
Checked on x [2, 16, 24] whose tokens have standard deviations 1, 3, 0.03 and 0.003: on the quiet
ones eps decides the answer.""",
        [Case("small", "x " + _SMALL_X + ", tokens of std 1, 3, 0.03, 0.003",
              _keys("layer_norm", "small", "x", "weight", "bias"), "layer_norm/small/out")],
        rtol=1e-5, atol=1e-5,
        mistakes=[(EPS_1E5, lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, eps=1e-5)),
                  (UNBIASED, lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, ddof=1)),
                  (UNBIASED + " (and eps outside the square root, as the Annotated Transformer)",
                   lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, ddof=1, eps_outside=True)),
                  (EPS_OUTSIDE, lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, eps_outside=True)),
                  (NO_EPS, lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, eps=0.0)),
                  (WRONG_AXIS + " (you used axis 1, the tokens)", lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, axis=1)),
                  (WRONG_AXIS + " (you used axis 0, the batch)", lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, axis=0)),
                  (WRONG_AXIS + " (you used all axes at once)",
                   lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, axis=None)),
                  (NO_AFFINE, lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, affine=False))]),
    Exercise(
        "erf", "2 LayerNorm and GELU", "the error function, without SciPy, to float32 accuracy",
        """\
erf(x): the error function, elementwise, erf(x) = 2/sqrt(pi) * integral from 0 to x of exp(-t^2) dt.

    x: any shape, float32  ->  same shape, float32, within 1e-6 of torch.erf

NumPy has no erf. Options: math.erf on each element (np.vectorize, then back to float32), or a
formula such as Abramowitz & Stegun 7.1.26 (max error 1.5e-7), valid for x >= 0:
    t = 1 / (1 + 0.3275911 x)
    erf(x) = 1 - t (0.254829592 + t (-0.284496736 + t (1.421413741 + t (-1.453152027 + t 1.061405429)))) exp(-x^2)
erf is odd: erf(-x) = -erf(x). (numpy_mixer.layers.erf fits its own polynomials: see tools/fit_erf.py.)
Checked on x from -6 to 6.""",
        [Case("small", "x [8, 200] in [-6, 6]", _keys("erf", "small", "x"), "erf/small/out")],
        rtol=0, atol=1e-6,
        mistakes=[("x >= 0 formula used for negative x: " + "erf is odd, use erf(|x|) with the sign of x",
                   lambda x: M.erf_abramowitz_stegun(x))],
        diagnose=_erf_pattern),
    Exercise(
        "gelu", "2 LayerNorm and GELU", "the exact GELU, x * Phi(x), with your erf",
        """\
gelu(x): the Gaussian error linear unit, exact form, elementwise.

    x: any shape, float32  ->  same shape, float32

    gelu(x) = x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2)))

timm's Mixer uses torch.nn.GELU() with approximate='none': the erf form, NOT the tanh
approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) of GPT-2 and BERT (they differ by up to
5e-4, enough to move a 12-block model's logits). Use your erf from the previous exercise.
Checked on x from -8 to 8.""",
        [Case("small", "x [8, 250] in [-8, 8]", _keys("gelu", "small", "x"), "gelu/small/out")],
        rtol=1e-5, atol=2e-6,
        mistakes=[(TANH_GELU, lambda x: M.gelu(x, "tanh")),
                  (SIGMOID_GELU, lambda x: M.gelu(x, "sigmoid")),
                  (NO_SQRT2, lambda x: M.gelu(x, "no_sqrt2")),
                  (NO_HALF, lambda x: M.gelu(x, "no_half")),
                  (RELU, lambda x: M.gelu(x, "relu"))]),
    Exercise(
        "linear", "3 token and channel mixing", "torch's Linear: x @ weight.T + bias",
        """\
linear(x, weight, bias): torch.nn.Linear on the last axis.

    x: [..., in], weight: [out, in], bias: [out]  ->  [..., out]

PyTorch stores a Linear's weight as [out, in] (one row per output), so y = x @ weight.T + bias.
Checked with weight [16, 24] and with a square weight [24, 24] (where x @ weight runs, and is wrong).""",
        [Case("small", "x [2, 5, 24], weight [16, 24]", _keys("linear", "small", "x", "weight", "bias"),
              "linear/small/out"),
         Case("square", "x [2, 5, 24], weight [24, 24]", _keys("linear", "square", "x", "weight", "bias"),
              "linear/square/out")],
        rtol=1e-5, atol=1e-5,
        mistakes=[(W_NOT_WT, lambda x, w, b: M.linear(x, w, b, transpose=False)),
                  (NO_BIAS, lambda x, w, b: M.linear(x, w, b, use_bias=False))],
        error_hint="weight is [out, in]: x [..., in] @ weight.T [in, out]"),
    Exercise(
        "mlp", "3 token and channel mixing", "timm's Mlp: fc1 -> GELU -> fc2",
        """\
mlp(x, fc1, fc2): timm's Mlp as the Mixer uses it: linear, exact GELU, linear (dropout is off).

    x: [..., D], fc1 = {"weight": [hidden, D], "bias": [hidden]}, fc2 = {"weight": [D, hidden], "bias": [D]}
    ->  [..., D]

    y = linear(gelu(linear(x, **fc1)), **fc2)

The same function serves both mixings: mlp_tokens (D = N tokens) and mlp_channels (D = C channels).
Checked on x [2, 5, 24] with hidden = 96.""",
        [Case("small", "x [2, 5, 24], hidden 96", _params("mlp", "small", "fc1", "fc2"), "mlp/small/out")],
        rtol=1e-5, atol=1e-5,
        mistakes=[(TANH_GELU, lambda x, fc1, fc2: M.mlp(x, fc1, fc2, act="tanh")),
                  (SIGMOID_GELU, lambda x, fc1, fc2: M.mlp(x, fc1, fc2, act="sigmoid")),
                  (RELU, lambda x, fc1, fc2: M.mlp(x, fc1, fc2, act="relu")),
                  (NO_ACT, lambda x, fc1, fc2: M.mlp(x, fc1, fc2, act="none"))],
        error_hint="weight is [out, in]: x @ weight.T, for fc1 and fc2 (" + W_NOT_WT + ")"),
    Exercise(
        "token_mixing", "3 token and channel mixing", "LayerNorm, transpose, token MLP, transpose back, residual",
        """\
token_mixing(x, norm1, mlp_tokens): the first half of a Mixer block: mixing ACROSS tokens.

    x: [B, N, C], norm1 = {"weight": [C], "bias": [C]},
    mlp_tokens = {"fc1": {"weight": [T, N], "bias": [T]}, "fc2": {"weight": [N, T], "bias": [N]}}
    ->  [B, N, C]

    y = layer_norm(x, **norm1)                  # [B, N, C], each token over its channels (eps 1e-6)
    y = mlp(y.swapaxes(1, 2), **mlp_tokens)     # [B, C, N] -> [B, C, T] -> [B, C, N]: mixes the N tokens
    return x + y.swapaxes(1, 2)                 # back to [B, N, C], plus the residual

timm: x = x + mlp_tokens(norm1(x).transpose(1, 2)).transpose(1, 2). Use your layer_norm and mlp.
Checked on N=16, C=24; on N = C = 16 (where leaving out the transposes runs, and is wrong); and on a
full-size mixer_b16 block (N=196, C=768, T=384).""",
        [Case("small", "x " + _SMALL_X, _params("token_mixing", "small", "norm1", "mlp_tokens"),
              "token_mixing/small/out"),
         Case("square", "x " + _SQUARE_X, _params("token_mixing", "square", "norm1", "mlp_tokens"),
              "token_mixing/square/out"),
         Case("b16", "x " + _B16_X, _b16("stem/b16/out", "norm1", "mlp_tokens"), "token_mixing/b16/out")],
        rtol=1e-5, atol=1e-5,
        mistakes=[(NO_TRANSPOSES, lambda x, n, m: M.token_mixing(x, n, m, transposes="none")),
                  (RESHAPE_NOT_TRANSPOSE, lambda x, n, m: M.token_mixing(x, n, m, transposes="reshape")),
                  (NO_RESIDUAL, lambda x, n, m: M.token_mixing(x, n, m, residual="none")),
                  (NORMED_RESIDUAL, lambda x, n, m: M.token_mixing(x, n, m, residual="normed")),
                  (NORM_AFTER_TRANSPOSE, lambda x, n, m: M.token_mixing(x, n, m, norm_after_transpose=True)),
                  (TANH_GELU, lambda x, n, m: M.token_mixing(x, n, m, act="tanh")),
                  (EPS_1E5, lambda x, n, m: M.token_mixing(x, n, m, ln=dict(eps=1e-5))),
                  (UNBIASED, lambda x, n, m: M.token_mixing(x, n, m, ln=dict(ddof=1))),
                  (WRONG_AXIS, lambda x, n, m: M.token_mixing(x, n, m, ln=dict(axis=1)))],
        error_hint=NO_TRANSPOSES),
    Exercise(
        "channel_mixing", "3 token and channel mixing", "LayerNorm, channel MLP, residual",
        """\
channel_mixing(x, norm2, mlp_channels): the second half of a Mixer block: mixing ACROSS channels.

    x: [B, N, C], norm2 = {"weight": [C], "bias": [C]},
    mlp_channels = {"fc1": {"weight": [H, C], "bias": [H]}, "fc2": {"weight": [C, H], "bias": [C]}}
    ->  [B, N, C]

    return x + mlp(layer_norm(x, **norm2), **mlp_channels)   # [B, N, C] -> [B, N, H] -> [B, N, C]

No transpose here: the MLP acts on the last axis, the C channels of each token.
Checked on N=16, C=24, on N = C = 16, and on a full-size mixer_b16 block (C=768, H=3072).""",
        [Case("small", "x " + _SMALL_X, _params("channel_mixing", "small", "norm2", "mlp_channels"),
              "channel_mixing/small/out"),
         Case("square", "x " + _SQUARE_X, _params("channel_mixing", "square", "norm2", "mlp_channels"),
              "channel_mixing/square/out"),
         Case("b16", "x " + _B16_X, _b16("token_mixing/b16/out", "norm2", "mlp_channels"), "channel_mixing/b16/out")],
        rtol=1e-5, atol=1e-5,
        mistakes=[(NO_RESIDUAL, lambda x, n, m: M.channel_mixing(x, n, m, residual="none")),
                  (NORMED_RESIDUAL, lambda x, n, m: M.channel_mixing(x, n, m, residual="normed")),
                  (TANH_GELU, lambda x, n, m: M.channel_mixing(x, n, m, act="tanh")),
                  (CHANNEL_AS_TOKEN, lambda x, n, m: M.channel_mixing(x, n, m, mix_tokens=True)),
                  (EPS_1E5, lambda x, n, m: M.channel_mixing(x, n, m, ln=dict(eps=1e-5))),
                  (UNBIASED, lambda x, n, m: M.channel_mixing(x, n, m, ln=dict(ddof=1))),
                  (WRONG_AXIS, lambda x, n, m: M.channel_mixing(x, n, m, ln=dict(axis=1)))],
        error_hint="channel mixing needs no transpose; weight is [out, in]: x @ weight.T"),
    Exercise(
        "mixer_block", "3 token and channel mixing", "token mixing, then channel mixing",
        """\
mixer_block(x, norm1, mlp_tokens, norm2, mlp_channels): timm's MixerBlock.

    x: [B, N, C]  ->  [B, N, C]

    x = token_mixing(x, norm1, mlp_tokens)
    x = channel_mixing(x, norm2, mlp_channels)

Each half has its own residual. Called as mixer_block(x, **params["blocks"][i]).
Checked on N=16, C=24, on N = C = 16, and on a full-size mixer_b16 block.""",
        [Case("small", "x " + _SMALL_X,
              _params("mixer_block", "small", "norm1", "mlp_tokens", "norm2", "mlp_channels"), "mixer_block/small/out"),
         Case("square", "x " + _SQUARE_X,
              _params("mixer_block", "square", "norm1", "mlp_tokens", "norm2", "mlp_channels"),
              "mixer_block/square/out"),
         Case("b16", "x " + _B16_X, _b16("stem/b16/out", "norm1", "mlp_tokens", "norm2", "mlp_channels"),
              "mixer_block/b16/out")],
        rtol=1e-5, atol=1e-5,
        mistakes=[(NO_RESIDUAL + " (in token mixing)", lambda x, *p: M.mixer_block(x, *p, token=dict(residual="none"))),
                  (NO_RESIDUAL + " (in channel mixing)",
                   lambda x, *p: M.mixer_block(x, *p, channel=dict(residual="none"))),
                  (NO_RESIDUAL + " (in both halves)",
                   lambda x, *p: M.mixer_block(x, *p, token=dict(residual="none"), channel=dict(residual="none"))),
                  (NO_TRANSPOSES, lambda x, *p: M.mixer_block(x, *p, token=dict(transposes="none"))),
                  (RESHAPE_NOT_TRANSPOSE, lambda x, *p: M.mixer_block(x, *p, token=dict(transposes="reshape"))),
                  (CHANNEL_FIRST, lambda x, *p: M.mixer_block(x, *p, order="channel_first")),
                  (PARALLEL, lambda x, *p: M.mixer_block(x, *p, order="parallel")),
                  (SWAPPED_NORMS, lambda x, *p: M.mixer_block(x, *p, order="swapped_norms")),
                  (TANH_GELU, lambda x, *p: M.mixer_block(x, *p, token=dict(act="tanh"), channel=dict(act="tanh"))),
                  (EPS_1E5, lambda x, *p: M.mixer_block(x, *p, token=dict(ln=dict(eps=1e-5)),
                                                        channel=dict(ln=dict(eps=1e-5))))],
        error_hint=NO_TRANSPOSES),
    Exercise(
        "global_pool", "4 the whole model", "average the tokens",
        """\
global_pool(x): timm's global_pool='avg' for the Mixer: the mean over the tokens.

    x: [B, N, C]  ->  [B, C]

Mixer has no class token: every token counts the same, so the image's feature vector is
x.mean(axis=1). Checked on N=16, C=24 and on N = C = 16.""",
        [Case("small", "x " + _SMALL_X, _keys("global_pool", "small", "x"), "global_pool/small/out"),
         Case("square", "x " + _SQUARE_X, _keys("global_pool", "square", "x"), "global_pool/square/out")],
        rtol=1e-6, atol=1e-6,
        mistakes=[(MAX_POOL, lambda x: M.global_pool(x, "max")),
                  (SUM_POOL, lambda x: M.global_pool(x, "sum")),
                  (FIRST_TOKEN, lambda x: M.global_pool(x, "first")),
                  (CHANNEL_POOL, lambda x: M.global_pool(x, "channels"))]),
    Exercise(
        "forward", "4 the whole model", "stem, blocks, final norm, mean pool, head",
        """\
forward(x, params, patch_size=16): the whole MLP-Mixer, images to logits.

    x: [B, 3, H, W] float32, params: nested weights as numpy_mixer.model.nest(state_dict) gives them:
        params["stem"]["proj"], params["blocks"][i] (norm1, mlp_tokens, norm2, mlp_channels),
        params["norm"], params["head"]
    ->  [B, K] logits

    x = stem(x, params["stem"]["proj"], patch_size)    # [B, N, C]
    for block in params["blocks"]:
        x = mixer_block(x, **block)                     # [B, N, C]
    x = layer_norm(x, **params["norm"])                 # the final norm
    x = global_pool(x)                                  # [B, C]
    return linear(x, **params["head"])                  # [B, K]

Checked on a tiny 2-block Mixer (32 x 32 images, P=8, C=32, K=10) with seeded weights, against
timm's MlpMixer loaded with the same weights.""",
        [Case("small", "x [2, 3, 32, 32], 2 blocks, C=32, K=10",
              lambda s: (s["forward/small/x"], s.params("forward/small"), 8), "forward/small/out")],
        rtol=1e-5, atol=1e-5,
        mistakes=[(MAX_POOL, lambda x, p, P=16: M.forward(x, p, P, pool="max")),
                  (SUM_POOL, lambda x, p, P=16: M.forward(x, p, P, pool="sum")),
                  (FIRST_TOKEN, lambda x, p, P=16: M.forward(x, p, P, pool="first")),
                  (NO_FINAL_NORM, lambda x, p, P=16: M.forward(x, p, P, final_norm=False)),
                  (NO_RESIDUAL + " (in token mixing)",
                   lambda x, p, P=16: M.forward(x, p, P, block=dict(token=dict(residual="none")))),
                  (NO_RESIDUAL + " (in channel mixing)",
                   lambda x, p, P=16: M.forward(x, p, P, block=dict(channel=dict(residual="none")))),
                  (TANH_GELU, lambda x, p, P=16: M.forward(
                      x, p, P, block=dict(token=dict(act="tanh"), channel=dict(act="tanh")))),
                  (HWC_PATCHES, lambda x, p, P=16: M.forward(x, p, P, stem_kw=dict(order="hwc"))),
                  (CHANNEL_FIRST, lambda x, p, P=16: M.forward(x, p, P, block=dict(order="channel_first"))),
                  ("a missing head: return linear(x, **params['head']) after pooling",
                   lambda x, p, P=16: M.forward(x, p, P, head=False))],
        error_hint="check every step's shapes against the legend in numpy_mixer/layers.py"),
    Exercise(
        "preprocess", "5 preprocessing", "timm's eval transform: resize 256 bicubic, centre crop 224, normalise",
        """\
preprocess(img): an RGB photo to the model's input, as timm's eval transform for
mixer_b16_224.goog_in21k_ft_in1k does it.

    img: [H, W, 3] uint8  ->  [3, 224, 224] float32

    1. resize so the SHORTER side is 256 = floor(224 / crop_pct 0.875), keeping the aspect ratio
       (the longer side is int(256 * long / short)), with BICUBIC interpolation: with Pillow,
       Image.fromarray(img).resize((new_w, new_h), Image.Resampling.BICUBIC), which is what
       torchvision's Resize does for a PIL image
    2. cut the central 224 x 224: left = int(round((new_w - 224) / 2)), top likewise
    3. to float32 in [0, 1]: / 255; then normalise with mean = std = (0.5, 0.5, 0.5): (x - 0.5) / 0.5
    4. HWC -> CHW

Checked on a 180 x 240 picture (upsampled) and a 320 x 270 one (downsampled).""",
        [Case("landscape", "img [180, 240, 3]", _keys("preprocess", "landscape", "img"), "preprocess/landscape/out"),
         Case("portrait", "img [320, 270, 3]", _keys("preprocess", "portrait", "img"), "preprocess/portrait/out")],
        rtol=1e-5, atol=1e-5,
        mistakes=[(BILINEAR, lambda img: M.preprocess(img, interpolation="bilinear")),
                  (NEAREST, lambda img: M.preprocess(img, interpolation="nearest")),
                  (SQUASH, lambda img: M.preprocess(img, crop="squash")),
                  (SHORT_SIDE_224, lambda img: M.preprocess(img, crop="short_side")),
                  (SQUASH + " (and bilinear instead of bicubic)",
                   lambda img: M.preprocess(img, crop="squash", interpolation="bilinear")),
                  (IMAGENET_NORM, lambda img: M.preprocess(img, mean=M.IMAGENET_MEAN, std=M.IMAGENET_STD)),
                  (NO_NORMALIZE, lambda img: M.preprocess(img, mean=(0, 0, 0), std=(1, 1, 1))),
                  (NO_SCALE, lambda img: M.preprocess(img, scale=False)),
                  (HWC_IMAGE, lambda img: M.preprocess(img, chw=False))]),
]

BY_NAME = {e.name: e for e in EXERCISES}
# fixtures are made in this order: the full-size chain is picture -> preprocess -> stem -> token mixing -> channel mixing
BUILD_ORDER = [BY_NAME[n] for n in ["preprocess", "patchify", "stem", "layer_norm", "erf", "gelu", "linear", "mlp",
                                    "token_mixing", "channel_mixing", "mixer_block", "global_pool", "forward"]]

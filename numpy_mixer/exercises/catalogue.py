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
    out: str  # fixture key of timm's answer (for an exercise with named outputs: the prefix of their keys)
    rtol: float = None  # this case's tolerance, when not the exercise's (float64 gradients: tighter)
    atol: float = None


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
    hints: list = field(default_factory=list)  # [the idea, the shapes and axes, the NumPy calls]: hint(name)
    trace_transposes: bool = False  # on a wrong answer, run it again to see which axes it transposed
    outputs: list = field(default_factory=list)  # named outputs ("dx", "dweight", ...): one verdict line each
    split: Callable = None  # the learner's return value -> {output name: value}; raises ValueError if malformed

    @property
    def named(self):
        return bool(self.outputs)


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
NO_TRANSPOSES = ("token mixing without the transposes (mlp_tokens got the channels as its last axis): it acts on "
                 "the token axis, so transpose axes 1 and 2, [B, N, C] -> [B, C, N], before it and back after "
                 "(x.swapaxes(1, 2))")
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
SILU = "SiLU (x * sigmoid(x), swish) instead of GELU: timm's Mixer uses the exact GELU, x * Phi(x)"
PHI_ONLY = "Phi(x) alone, not times x: GELU is x * Phi(x) = x/2 * (1 + erf(x / sqrt(2)))"
ACT_AFTER_FC2 = "a GELU after fc2 as well: timm's Mlp has one activation, between fc1 and fc2"
RMSNORM = ("RMSNorm instead of LayerNorm: LayerNorm subtracts the mean first, (x - mean) / sqrt(var + eps), "
           "not x / sqrt(mean(x^2) + eps)")
NO_CENTER = "the mean not subtracted: (x - mean) / sqrt(var + eps), not x / sqrt(var + eps)"
SWAPPED_AFFINE = "weight and bias swapped: x_hat * weight + bias (weight scales, bias shifts)"
NO_NORM = "no LayerNorm before the MLP: it is x + mlp(norm(x))"
POST_NORM = ("a post-norm block, norm(x + mlp(x)) (the original Transformer's order); the Mixer is pre-norm: "
             "x + mlp(norm(x)), the residual itself never normalised")
SKIP_FROM_INPUT = ("the second residual adds the block's input; channel mixing adds its own input, token mixing's "
                   "output: x = x + token_mix(x); x = x + channel_mix(x)")
ONE_RESIDUAL = ("one residual around the whole block; each half has its own: x = x + token_mix(x), then "
                "x = x + channel_mix(x)")
POOL_BEFORE_NORM = "pooling before the final LayerNorm: normalise every token with params['norm'], then average them"
BATCH_POOL = "the mean over the batch (axis 0); pool over the tokens, axis=1"
STRIDED_PATCHES = ("reshaped as [B, 3, P, G, P, G]: each 'patch' takes every G-th pixel; split each side as "
                   "(G, P), the tile index first: [B, 3, G, P, G, P]")
BGR = "channels in BGR order (as OpenCV gives them); the model takes RGB, as Pillow does"
ROUND_LONG = "the longer side rounded with round(); torchvision's Resize truncates it: int(256 * long / short)"
CEIL_LONG = "the longer side rounded up (ceil); torchvision's Resize truncates it: int(256 * long / short)"
CROP_FLOOR = ("the crop offset rounded down ((w - 224) // 2); torchvision's CenterCrop rounds it, halves to even: "
              "int(round((w - 224) / 2))")
CROP_HALF_UP = ("the crop offset rounded half up (int(d / 2 + 0.5), or ceil); torchvision's CenterCrop uses round(), "
                "which rounds halves to even: round(58.5) = 58")
SQUARE_256 = ("resized to 256 x 256 (the aspect ratio lost) before the crop; resize the SHORTER side to 256 and "
              "keep the aspect ratio")
NO_SQRT = "divided by the variance, not by the standard deviation: (x - mean) / sqrt(var + eps)"
KERNEL_HWC = ("the kernel flattened in (h, w, c) order while the patches are (c, h, w): both must be flattened the "
              "same way, weight.reshape(C, -1) keeps the kernel's (c, h, w)")
NORM1_TWICE = "norm1 used before both MLPs; channel mixing has its own norm, norm2"
NO_STEM_BIAS = "the stem's bias left out: patches @ weight.reshape(C, -1).T + bias"
CROP_THEN_RESIZE = ("the central square cropped first, then resized to 224: resize the shorter side to 256 first, "
                    "then cut the central 224 x 224 (the border the crop drops is 12.5% of the side)")
KEEPDIMS = "an extra axis of size 1 (keepdims=True?): the shapes must match exactly"
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


def _patch_pattern(out, expected, args):
    """patchify only moves pixels: find where each value came from and say what order the answer used."""
    from itertools import permutations
    x, P = args[0], (args[1] if len(args) > 1 else 16)
    B, c, height, width = x.shape
    lookup = {v: i for i, v in enumerate(x.ravel().tolist())}
    if len(lookup) != x.size:  # repeated values: the source of a value is ambiguous
        return None
    try:
        src = np.array([lookup[v] for v in out.ravel().tolist()])
    except KeyError:
        return "values that are not pixels of x: patchify only moves pixels, it computes nothing"
    b, ch, row, col = (a.reshape(out.shape) for a in np.unravel_index(src, x.shape))  # each [B, N, 3*P*P]
    if (b != np.arange(B)[:, None, None]).any():
        return "pixels of one image in another image's tokens: keep the batch axis first"
    tile_r, tile_c = row // P, col // P
    if (tile_r != tile_r[..., :1]).any() or (tile_c != tile_c[..., :1]).any():
        return RESHAPE_PATCHES
    problems = []
    N = out.shape[1]
    if (tile_r[..., 0] * (width // P) + tile_c[..., 0] != np.arange(N)).any():
        if (tile_c[..., 0] * (height // P) + tile_r[..., 0] == np.arange(N)).all():
            problems.append("tokens numbered column by column; timm numbers them row by row")
        else:
            problems.append("tokens in another order than row by row over the grid")
    where = {"c": ch[0, 0], "h": row[0, 0] % P, "w": col[0, 0] % P}
    size = {"c": c, "h": P, "w": P}
    for order in permutations("chw"):
        index = (where[order[0]] * size[order[1]] + where[order[1]]) * size[order[2]] + where[order[2]]
        if (index == np.arange(out.shape[2])).all():
            if order != ("c", "h", "w"):
                problems.append(f"each patch flattened in ({', '.join(order)}) order; the conv kernel [C, 3, P, P] "
                                "is stored (c, h, w)")
            break
    return "; ".join(problems) or None


# --- the exercises, in the walkthrough's order ----------------------------------------------------
# Statements say what to compute and why, the shapes and timm's details, never the code; the code is in
# the third hint and in solutions.py.

_SMALL_X = "[2, 16, 24] (N=16 tokens, C=24 channels)"
_SQUARE_X = "[2, 16, 16] (N = C = 16)"
_B16_X = "[1, 196, 768], the full-size mixer_b16 block"

EXERCISES = [
    Exercise(
        "patchify", "1 patches", "cut an image into P x P patches, one row per token",
        """\
patchify(x, patch_size=16): cut each image into non-overlapping P x P tiles and lay each tile out as one
row of numbers: one token per tile.

    x: [B, 3, H, W] float32  ->  [B, N, 3*P*P] float32, N = (H/P) * (W/P)

Why: the Mixer's stem is a P x P convolution with stride P. Such a conv sees each tile exactly once, so it
is the same as cutting the tiles out and multiplying each by the flattened kernel (the next exercise). For
that to work, each tile is flattened in the order the kernel stem.proj.weight [C, 3, P, P] is stored:
channel first, then row, then column, (c, h, w). Tokens are numbered row by row over the image (left to
right, then down), as the conv's output [B, C, H/P, W/P] flattens.

Worked example: a [1, 3, 4, 6] image with P = 2 has a 2 x 3 grid of tiles, N = 6 tokens of 12 values. Token
4 is the tile in grid row 1, column 1 (image rows 2-3, columns 2-3); its value 7 is (c, i, j) = (1, 1, 1),
the pixel x[0, 1, 3, 3].
Checked against torch.nn.functional.unfold on an 8 x 12 image (P=4, a 2 x 3 grid) and a 16 x 16 one.""",
        [Case("small", "x [2, 3, 8, 12], P=4", lambda s: (s["patchify/small/x"], 4), "patchify/small/out"),
         Case("square", "x [1, 3, 16, 16], P=4", lambda s: (s["patchify/square/x"], 4), "patchify/square/out")],
        rtol=0, atol=0,
        mistakes=[(HWC_PATCHES, lambda x, P=16: M.patchify(x, P, order="hwc")),
                  (CWH_PATCHES, lambda x, P=16: M.patchify(x, P, order="cwh")),
                  (COLUMN_TOKENS, lambda x, P=16: M.patchify(x, P, grid="columns")),
                  (RESHAPE_PATCHES, lambda x, P=16: M.patchify(x, P, method="reshape")),
                  (STRIDED_PATCHES, lambda x, P=16: M.patchify(x, P, method="strided"))],
        diagnose=_patch_pattern,
        hints=["See the image as a grid of tiles: split each spatial axis in two, which tile and which pixel "
               "inside it; then bring the two tile axes forward and the three axes inside a tile (channel, row, "
               "column) to the back, and flatten each group.",
               "[B, 3, H, W] -> [B, 3, G_h, P, G_w, P] (axes b, c, tile row, i, tile column, j) -> "
               "[B, G_h, G_w, 3, P, P] -> [B, G_h * G_w, 3*P*P]. The order of the axes you flatten together is "
               "the order of the values.",
               "x.reshape(B, 3, H // P, P, W // P, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, -1, 3 * P * P); "
               "no loops."]),
    Exercise(
        "stem", "1 patches", "patch embedding: the stride-P conv as patchify + one matmul",
        """\
stem(x, proj, patch_size=16): the patch embedding, timm's `stem.proj`: a P x P convolution with stride P
from the 3 colour channels to C channels, its output read as N tokens.

    x: [B, 3, H, W] float32, proj = {"weight": [C, 3, P, P], "bias": [C]}  ->  [B, N, C] float32

Why one matrix product: with the stride equal to the kernel size the windows do not overlap, so output
token n, channel k is the dot product of tile n (3*P*P values, from your patchify) with kernel k (weight[k],
3*P*P values in the same (c, h, w) order), plus bias[k]. PyTorch keeps weights output-first: [out, ...].
For mixer_b16_224: a 224 x 224 image, P = 16, 196 tokens of 768 values each, C = 768.
Checked against timm's PatchEmbed on an 8 x 12 image (P=4, C=48 = 3*4*4) and on a 224 x 224 image with
mixer_b16's stem (C = 768 = 3*16*16: the weight is square, so forgetting its layout runs and is wrong).""",
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
                  (STRIDED_PATCHES, lambda x, proj, P=16: M.stem(x, proj, P, method="strided")),
                  (KERNEL_HWC, lambda x, proj, P=16: M.stem(x, proj, P, weight="kernel_hwc")),
                  (NO_BIAS, lambda x, proj, P=16: M.stem(x, proj, P, use_bias=False))],
        error_hint="check each matmul's shapes: patches [B, N, 3*P*P] @ weight.reshape(C, -1).T [3*P*P, C]",
        hints=["Every output number is one tile times one kernel: all of them at once are one matrix product of "
               "the tiles with the kernels laid out as columns.",
               "patches [B, N, 3*P*P]; the kernels flattened (c, h, w) are [C, 3*P*P], and the right-hand side "
               "must be [3*P*P, C]; the bias [C] broadcasts over B and N.",
               "patchify(x, P) @ weight.reshape(C, -1).T + bias"]),
    Exercise(
        "layer_norm", "2 LayerNorm and GELU", "LayerNorm over the channels, as torch (eps 1e-6, biased variance)",
        """\
layer_norm(x, weight, bias, eps=1e-6): normalise each token over its own channels to mean 0 and variance 1,
then scale by weight and shift by bias, one pair per channel.

    x: [..., C], weight, bias: [C]  ->  [..., C], same dtype (float32)

    y = (x - mean) / sqrt(var + eps) * weight + bias,   mean and var over the last axis

Why: it keeps every token on the same scale whatever the layers before did; weight and bias let the model
give some of the scale back.
The details that change the numbers, as torch.nn.LayerNorm(C, eps=1e-6), which timm's Mixer uses: the mean
and the variance are over the last axis only; the BIASED variance (divide by C, not C-1); eps = 1e-6
(PyTorch's default is 1e-5) added to the variance INSIDE the square root.
Worked example: one token [1, 2, 3, 6] (C = 4): mean 3, var (4 + 1 + 0 + 9) / 4 = 3.5, normalised
[-1.069, -0.535, 0, 1.604], then times weight plus bias.
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
                  (NO_AFFINE, lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, affine=False)),
                  (RMSNORM, lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, kind="rms")),
                  (NO_CENTER, lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, kind="no_center")),
                  (SWAPPED_AFFINE, lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, swap_affine=True)),
                  (RMSNORM + " (and eps outside the square root)",
                   lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, kind="rms", eps_outside=True)),
                  (NO_SQRT, lambda x, w, b, eps=1e-6: M.layer_norm(x, w, b, kind="no_sqrt"))],
        hints=["Per token: subtract its mean, divide by its standard deviation (with eps inside the square root), "
               "then scale and shift channel by channel.",
               "Reduce over axis -1 only and keep that axis, so that the [..., 1] mean and variance broadcast "
               "against [..., C]; weight and bias [C] broadcast over every leading axis.",
               "mean = x.mean(axis=-1, keepdims=True); var = ((x - mean) ** 2).mean(axis=-1, keepdims=True) "
               "(x.var has ddof=0 too); (x - mean) / np.sqrt(var + np.float32(eps)) * weight + bias keeps float32."]),
    Exercise(
        "erf", "2 LayerNorm and GELU", "the error function, without SciPy, to float32 accuracy",
        """\
erf(x): the error function, elementwise: erf(x) = 2/sqrt(pi) * (the integral of exp(-t^2) from 0 to x).

    x: any shape, float32  ->  same shape, float32, within 1e-6 of torch.erf

Why: the exact GELU of the next exercise is x * Phi(x), and the normal CDF is Phi(x) = (1 + erf(x / sqrt 2)) / 2.
NumPy has no erf (SciPy has one, but this package does not depend on SciPy).
Facts you can use: erf is odd, erf(-x) = -erf(x); erf(0) = 0, erf(0.5) = 0.5205, erf(1) = 0.8427; it reaches
1 fast (erf(4) = 1 - 1.5e-8). Published approximations for x >= 0 reach about 1.5e-7: Abramowitz & Stegun 7.1.26
(hint('erf', 3) gives it). numpy_mixer.layers.erf fits its own (tools/fit_erf.py).
Checked on x from -6 to 6.""",
        [Case("small", "x [8, 200] in [-6, 6]", _keys("erf", "small", "x"), "erf/small/out")],
        rtol=0, atol=1e-6,
        mistakes=[("x >= 0 formula used for negative x: " + "erf is odd, use erf(|x|) with the sign of x",
                   lambda x: M.erf_abramowitz_stegun(x))],
        diagnose=_erf_pattern,
        hints=["Either Python's math.erf on each element (exact, slow, fine at these sizes), or a published "
               "approximation accurate to about 1e-7, evaluated on the whole array at once.",
               "Elementwise: the output has x's shape and dtype (float32). Approximations are written for x >= 0: "
               "compute on |x|, then put the sign back.",
               "A&S 7.1.26: t = 1 / (1 + 0.3275911 |x|); erf|x| = 1 - t (0.254829592 + t (-0.284496736 + t "
               "(1.421413741 + t (-1.453152027 + t 1.061405429)))) exp(-x^2); then np.sign(x) * that. Or "
               "np.vectorize(math.erf, otypes=[np.float64])(x).astype(np.float32)."]),
    Exercise(
        "gelu", "2 LayerNorm and GELU", "the exact GELU, x * Phi(x), with your erf",
        """\
gelu(x): the Gaussian error linear unit, exact form, elementwise: x weighted by the probability that a
standard normal variable is below x.

    x: any shape, float32  ->  same shape, float32

    gelu(x) = x * Phi(x),   Phi(x) = (1 + erf(x / sqrt 2)) / 2, the standard normal CDF

Why: a smooth ReLU: near 0 for very negative x, near x for large x, slightly negative in between (its minimum
is about -0.17, at x = -0.75). timm's Mixer uses torch.nn.GELU() with approximate='none': the erf form, NOT
the tanh approximation of GPT-2 and BERT (they differ by up to 5e-4, enough to move a 12-block model's
logits), and not SiLU, x * sigmoid(x).
Worked example: gelu(1) = Phi(1) = 0.8413; gelu(-1) = -0.1587; gelu(0) = 0.
Checked on x from -8 to 8.""",
        [Case("small", "x [8, 250] in [-8, 8]", _keys("gelu", "small", "x"), "gelu/small/out")],
        rtol=1e-5, atol=2e-6,
        mistakes=[(TANH_GELU, lambda x: M.gelu(x, "tanh")),
                  (SIGMOID_GELU, lambda x: M.gelu(x, "sigmoid")),
                  (NO_SQRT2, lambda x: M.gelu(x, "no_sqrt2")),
                  (NO_HALF, lambda x: M.gelu(x, "no_half")),
                  (RELU, lambda x: M.gelu(x, "relu")),
                  (SILU, lambda x: M.gelu(x, "silu")),
                  (PHI_ONLY, lambda x: M.gelu(x, "phi"))],
        hints=["Phi from your erf, then times x.",
               "Elementwise, same shape; keep float32: the constants 1/2 and 1/sqrt(2) must be float32 too, or "
               "NumPy upcasts.",
               "np.float32(0.5) * x * (1 + erf(x * np.float32(1 / math.sqrt(2))))"]),
    Exercise(
        "linear", "3 token and channel mixing", "torch's Linear, weights stored [out, in]",
        """\
linear(x, weight, bias): torch.nn.Linear on the last axis: each output is a weighted sum of the inputs plus
a bias, the same for every row.

    x: [..., in], weight: [out, in], bias: [out]  ->  [..., out]

The layout is the point: PyTorch stores a Linear's weight as [out, in], one ROW per output unit, so output j
of a row of x is that row's dot product with weight[j], plus bias[j]. The leading axes of x are a batch.
Checked with weight [16, 24] and with a square weight [24, 24] (where getting the layout wrong still runs,
and is wrong).""",
        [Case("small", "x [2, 5, 24], weight [16, 24]", _keys("linear", "small", "x", "weight", "bias"),
              "linear/small/out"),
         Case("square", "x [2, 5, 24], weight [24, 24]", _keys("linear", "square", "x", "weight", "bias"),
              "linear/square/out")],
        rtol=1e-5, atol=1e-5,
        mistakes=[(W_NOT_WT, lambda x, w, b: M.linear(x, w, b, transpose=False)),
                  (NO_BIAS, lambda x, w, b: M.linear(x, w, b, use_bias=False))],
        error_hint="weight is [out, in]: x [..., in] @ weight.T [in, out]",
        hints=["All the dot products of every row of x with every row of weight are one matrix product.",
               "x [..., in] times a matrix [in, out] gives [..., out]; weight is [out, in], so it goes in "
               "transposed; bias [out] broadcasts.",
               "x @ weight.T + bias (@ treats the leading axes of x as a batch)"]),
    Exercise(
        "mlp", "3 token and channel mixing", "timm's Mlp: fc1 -> GELU -> fc2",
        """\
mlp(x, fc1, fc2): timm's Mlp as the Mixer uses it: a linear layer from D to a wider hidden size, the exact
GELU, and a linear layer back to D (dropout is off at inference).

    x: [..., D], fc1 = {"weight": [hidden, D], "bias": [hidden]}, fc2 = {"weight": [D, hidden], "bias": [D]}
    ->  [..., D]

The same function serves both halves of a block: mlp_tokens (D = N tokens, hidden = T) and mlp_channels
(D = C channels, hidden = H). There is one activation, between the two layers, none after the second.
Checked on x [2, 5, 24] with hidden = 96.""",
        [Case("small", "x [2, 5, 24], hidden 96", _params("mlp", "small", "fc1", "fc2"), "mlp/small/out")],
        rtol=1e-5, atol=1e-5,
        mistakes=[(TANH_GELU, lambda x, fc1, fc2: M.mlp(x, fc1, fc2, act="tanh")),
                  (SIGMOID_GELU, lambda x, fc1, fc2: M.mlp(x, fc1, fc2, act="sigmoid")),
                  (RELU, lambda x, fc1, fc2: M.mlp(x, fc1, fc2, act="relu")),
                  (NO_ACT, lambda x, fc1, fc2: M.mlp(x, fc1, fc2, act="none")),
                  (SILU, lambda x, fc1, fc2: M.mlp(x, fc1, fc2, act="silu")),
                  (ACT_AFTER_FC2, lambda x, fc1, fc2: M.mlp(x, fc1, fc2, act_after_fc2=True))],
        error_hint="weight is [out, in]: x @ weight.T, for fc1 and fc2 (" + W_NOT_WT + ")",
        hints=["Compose what you have: linear, gelu, linear.",
               "[..., D] -> fc1 -> [..., hidden] -> GELU (same shape) -> fc2 -> [..., D]; fc1 and fc2 are dicts "
               "with the keys weight and bias, so ** unpacks them into linear's arguments.",
               "linear(gelu(linear(x, **fc1)), **fc2)"]),
    Exercise(
        "token_mixing", "3 token and channel mixing", "LayerNorm, mix across the tokens, residual",
        """\
token_mixing(x, norm1, mlp_tokens): the first half of a Mixer block. It lets the patches talk to each
other: for each channel on its own, an MLP mixes that channel's values across all N tokens. It is the only
place where information moves between positions of the image.

    x: [B, N, C], norm1 = {"weight": [C], "bias": [C]},
    mlp_tokens = {"fc1": {"weight": [T, N], "bias": [T]}, "fc2": {"weight": [N, T], "bias": [N]}}
    ->  [B, N, C]

In order: normalise each token over its channels with norm1 (your layer_norm, eps 1e-6); apply mlp_tokens
along the TOKEN axis (your mlp acts on the last axis, so while it runs the tokens must be the last axis,
and the result goes back to [B, N, C]); add the input x. The residual is pre-norm: the output is x plus
the MLP's result; the norm only feeds the MLP.
Checked on N=16, C=24; on N = C = 16 (where a missing or wrong transpose runs, and is wrong); and on a
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
                  (SILU, lambda x, n, m: M.token_mixing(x, n, m, act="silu")),
                  (ACT_AFTER_FC2, lambda x, n, m: M.token_mixing(x, n, m, act_after_fc2=True)),
                  (EPS_1E5, lambda x, n, m: M.token_mixing(x, n, m, ln=dict(eps=1e-5))),
                  (UNBIASED, lambda x, n, m: M.token_mixing(x, n, m, ln=dict(ddof=1))),
                  (WRONG_AXIS, lambda x, n, m: M.token_mixing(x, n, m, ln=dict(axis=1))),
                  (RMSNORM, lambda x, n, m: M.token_mixing(x, n, m, ln=dict(kind="rms"))),
                  (POST_NORM, lambda x, n, m: M.token_mixing(x, n, m, norm="post")),
                  (NO_NORM, lambda x, n, m: M.token_mixing(x, n, m, norm="none"))],
        error_hint=NO_TRANSPOSES, trace_transposes=True,
        hints=["Three moves: norm, mix along the tokens, residual. The one trick: the MLP works on the last axis, "
               "so the token axis has to be last while it runs, and put back after.",
               "[B, N, C] -norm1-> [B, N, C] -swap axes 1 and 2-> [B, C, N] -mlp_tokens-> [B, C, T] -> [B, C, N] "
               "-swap back-> [B, N, C], then + x. Not .T (it reverses all three axes, the batch too), not a "
               "reshape (it keeps the memory order and scrambles tokens and channels).",
               "y = layer_norm(x, **norm1); y = mlp(y.swapaxes(1, 2), **mlp_tokens).swapaxes(1, 2); return x + y"]),
    Exercise(
        "channel_mixing", "3 token and channel mixing", "LayerNorm, mix across the channels, residual",
        """\
channel_mixing(x, norm2, mlp_channels): the second half of a Mixer block: each token on its own, an MLP
mixes its C channels (the same MLP for every token, like a 1 x 1 convolution).

    x: [B, N, C], norm2 = {"weight": [C], "bias": [C]},
    mlp_channels = {"fc1": {"weight": [H, C], "bias": [H]}, "fc2": {"weight": [C, H], "bias": [C]}}
    ->  [B, N, C]

In order: normalise with norm2; the channel MLP, C -> H = 4C -> C, on the last axis; add the input x (a
pre-norm residual, as in token mixing). No transpose: the channels are already the last axis.
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
                  (SILU, lambda x, n, m: M.channel_mixing(x, n, m, act="silu")),
                  (CHANNEL_AS_TOKEN, lambda x, n, m: M.channel_mixing(x, n, m, mix_tokens=True)),
                  (EPS_1E5, lambda x, n, m: M.channel_mixing(x, n, m, ln=dict(eps=1e-5))),
                  (UNBIASED, lambda x, n, m: M.channel_mixing(x, n, m, ln=dict(ddof=1))),
                  (WRONG_AXIS, lambda x, n, m: M.channel_mixing(x, n, m, ln=dict(axis=1))),
                  (RMSNORM, lambda x, n, m: M.channel_mixing(x, n, m, ln=dict(kind="rms"))),
                  (POST_NORM, lambda x, n, m: M.channel_mixing(x, n, m, norm="post")),
                  (NO_NORM, lambda x, n, m: M.channel_mixing(x, n, m, norm="none"))],
        error_hint="channel mixing needs no transpose; weight is [out, in]: x @ weight.T",
        hints=["The same three moves as token mixing, norm, MLP, residual, but the MLP acts on the axis that is "
               "already last.",
               "[B, N, C] -norm2-> [B, N, C] -fc1-> [B, N, H] -GELU-> -fc2-> [B, N, C], then + x. The LayerNorm "
               "comes before the MLP, not after the sum.",
               "return x + mlp(layer_norm(x, **norm2), **mlp_channels)"]),
    Exercise(
        "mixer_block", "3 token and channel mixing", "token mixing, then channel mixing",
        """\
mixer_block(x, norm1, mlp_tokens, norm2, mlp_channels): timm's MixerBlock, the unit the Mixer repeats (12
times in mixer_b16): token mixing, then channel mixing, each with its own norm and its own residual.

    x: [B, N, C]  ->  [B, N, C]

The order matters: channel mixing takes token mixing's output, not the block's input, and each residual
adds the input of its own half. Called as mixer_block(x, **params["blocks"][i]).
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
                  (SKIP_FROM_INPUT, lambda x, *p: M.mixer_block(x, *p, order="skip_from_input")),
                  (ONE_RESIDUAL, lambda x, *p: M.mixer_block(x, *p, order="one_residual")),
                  (NORM1_TWICE, lambda x, *p: M.mixer_block(x, *p, order="norm1_twice")),
                  (POST_NORM, lambda x, *p: M.mixer_block(x, *p, token=dict(norm="post"), channel=dict(norm="post"))),
                  (TANH_GELU, lambda x, *p: M.mixer_block(x, *p, token=dict(act="tanh"), channel=dict(act="tanh"))),
                  (SILU, lambda x, *p: M.mixer_block(x, *p, token=dict(act="silu"), channel=dict(act="silu"))),
                  (RMSNORM, lambda x, *p: M.mixer_block(x, *p, token=dict(ln=dict(kind="rms")),
                                                        channel=dict(ln=dict(kind="rms")))),
                  (EPS_1E5, lambda x, *p: M.mixer_block(x, *p, token=dict(ln=dict(eps=1e-5)),
                                                        channel=dict(ln=dict(eps=1e-5))))],
        error_hint=NO_TRANSPOSES, trace_transposes=True,
        hints=["Compose your two halves.",
               "x [B, N, C] -> token mixing (norm1, mlp_tokens) -> [B, N, C] -> channel mixing (norm2, "
               "mlp_channels) -> [B, N, C].",
               "return channel_mixing(token_mixing(x, norm1, mlp_tokens), norm2, mlp_channels)"]),
    Exercise(
        "global_pool", "4 the whole model", "average the tokens",
        """\
global_pool(x): timm's global_pool='avg' for the Mixer: one feature vector per image, the average of its
tokens.

    x: [B, N, C]  ->  [B, C]

Why the mean: Mixer has no class token, every token counts the same, and the mean does not depend on the
number of tokens. Worked example: two tokens [1, 2] and [3, 6] pool to [2, 4].
Checked on N=16, C=24 and on N = C = 16.""",
        [Case("small", "x " + _SMALL_X, _keys("global_pool", "small", "x"), "global_pool/small/out"),
         Case("square", "x " + _SQUARE_X, _keys("global_pool", "square", "x"), "global_pool/square/out")],
        rtol=1e-6, atol=1e-6,
        mistakes=[(MAX_POOL, lambda x: M.global_pool(x, "max")),
                  (SUM_POOL, lambda x: M.global_pool(x, "sum")),
                  (FIRST_TOKEN, lambda x: M.global_pool(x, "first")),
                  (CHANNEL_POOL, lambda x: M.global_pool(x, "channels")),
                  (BATCH_POOL, lambda x: M.global_pool(x, "batch"))],
        hints=["Average over the tokens; keep the batch and the channels.",
               "The token axis is axis 1 of [B, N, C].",
               "x.mean(axis=1), which keeps x's dtype (float32)"]),
    Exercise(
        "forward", "4 the whole model", "stem, blocks, final norm, mean pool, head",
        """\
forward(x, params, patch_size=16): the whole MLP-Mixer, images to class logits.

    x: [B, 3, H, W] float32, params: nested weights as numpy_mixer.model.nest(state_dict) gives them:
        params["stem"]["proj"], params["blocks"][i] (norm1, mlp_tokens, norm2, mlp_channels),
        params["norm"], params["head"]
    ->  [B, K] logits

The steps, in timm's order: the patch embedding (stem) to [B, N, C]; every block in turn; the final
LayerNorm (params["norm"]) on every token; the mean over the tokens, to [B, C]; the classifier head, a
linear layer to K classes. The final norm acts on the tokens, BEFORE the pooling.
Checked on a tiny 2-block Mixer (32 x 32 images, P=8, C=32, K=10) with seeded weights, against
timm's MlpMixer loaded with the same weights.""",
        [Case("small", "x [2, 3, 32, 32], 2 blocks, C=32, K=10",
              lambda s: (s["forward/small/x"], s.params("forward/small"), 8), "forward/small/out")],
        rtol=1e-5, atol=1e-5,
        mistakes=[(MAX_POOL, lambda x, p, P=16: M.forward(x, p, P, pool="max")),
                  (SUM_POOL, lambda x, p, P=16: M.forward(x, p, P, pool="sum")),
                  (FIRST_TOKEN, lambda x, p, P=16: M.forward(x, p, P, pool="first")),
                  (NO_FINAL_NORM, lambda x, p, P=16: M.forward(x, p, P, final_norm=False)),
                  (POOL_BEFORE_NORM, lambda x, p, P=16: M.forward(x, p, P, pool_before_norm=True)),
                  (NO_RESIDUAL + " (in token mixing)",
                   lambda x, p, P=16: M.forward(x, p, P, block=dict(token=dict(residual="none")))),
                  (NO_RESIDUAL + " (in channel mixing)",
                   lambda x, p, P=16: M.forward(x, p, P, block=dict(channel=dict(residual="none")))),
                  (POST_NORM, lambda x, p, P=16: M.forward(
                      x, p, P, block=dict(token=dict(norm="post"), channel=dict(norm="post")))),
                  (TANH_GELU, lambda x, p, P=16: M.forward(
                      x, p, P, block=dict(token=dict(act="tanh"), channel=dict(act="tanh")))),
                  (SILU, lambda x, p, P=16: M.forward(
                      x, p, P, block=dict(token=dict(act="silu"), channel=dict(act="silu")))),
                  (HWC_PATCHES, lambda x, p, P=16: M.forward(x, p, P, stem_kw=dict(order="hwc"))),
                  (NO_STEM_BIAS, lambda x, p, P=16: M.forward(x, p, P, stem_kw=dict(use_bias=False))),
                  (CHANNEL_FIRST, lambda x, p, P=16: M.forward(x, p, P, block=dict(order="channel_first"))),
                  ("a missing head: return linear(x, **params['head']) after pooling",
                   lambda x, p, P=16: M.forward(x, p, P, head=False))],
        error_hint="check every step's shapes against the legend in numpy_mixer/layers.py",
        hints=["Chain the functions you wrote, in the order of the statement.",
               "[B, 3, H, W] -stem-> [B, N, C] -each block-> [B, N, C] -final norm-> [B, N, C] -mean over "
               "axis 1-> [B, C] -head-> [B, K].",
               "x = stem(x, params['stem']['proj'], patch_size); for block in params['blocks']: "
               "x = mixer_block(x, **block); x = layer_norm(x, **params['norm']); "
               "return linear(x.mean(axis=1), **params['head'])"]),
    Exercise(
        "preprocess", "5 preprocessing", "timm's eval transform: resize 256 bicubic, centre crop 224, normalise",
        """\
preprocess(img): an RGB photo to the model's input, exactly as timm's eval transform for
mixer_b16_224.goog_in21k_ft_in1k makes it.

    img: [H, W, 3] uint8, RGB  ->  [3, 224, 224] float32

The steps, and the details that change the pixels:
    1. resize with BICUBIC interpolation (as Pillow does it, which is what torchvision does for a PIL image)
       so that the SHORTER side is 256 = floor(224 / crop_pct 0.875), keeping the aspect ratio: the longer
       side is 256 * long / short TRUNCATED to an integer (torchvision's Resize: int(), not round);
    2. cut the central 224 x 224: the left offset is (new width - 224) / 2 rounded to the nearest integer,
       halves to even (Python's round, as torchvision's CenterCrop); the top offset likewise;
    3. to float32 in [0, 1] (divide by 255), then normalise with this model's mean = std = (0.5, 0.5, 0.5),
       so the values lie in [-1, 1];
    4. channels first, in RGB order: [224, 224, 3] -> [3, 224, 224].
Worked example: a 180 x 240 (H x W) photo becomes 256 x 341 (341.33 truncated), cropped at
left = round(58.5) = 58, top = 16.
Checked on a 180 x 240 photo (upsampled) and a 312 x 270 one (downsampled; its longer side, 295.82, and its
crop offset, 35.5, are where rounding mistakes show).""",
        [Case("landscape", "img [180, 240, 3]", _keys("preprocess", "landscape", "img"), "preprocess/landscape/out"),
         Case("portrait", "img [312, 270, 3]", _keys("preprocess", "portrait", "img"), "preprocess/portrait/out")],
        rtol=1e-5, atol=1e-5,
        mistakes=[(BILINEAR, lambda img: M.preprocess(img, interpolation="bilinear")),
                  (NEAREST, lambda img: M.preprocess(img, interpolation="nearest")),
                  (SQUASH, lambda img: M.preprocess(img, crop="squash")),
                  (SHORT_SIDE_224, lambda img: M.preprocess(img, crop="short_side")),
                  (SQUASH + " (and bilinear instead of bicubic)",
                   lambda img: M.preprocess(img, crop="squash", interpolation="bilinear")),
                  (SQUARE_256, lambda img: M.preprocess(img, crop="square_256")),
                  (CROP_THEN_RESIZE, lambda img: M.preprocess(img, crop="crop_then_resize")),
                  (ROUND_LONG, lambda img: M.preprocess(img, long_side="round")),
                  (CEIL_LONG, lambda img: M.preprocess(img, long_side="ceil")),
                  (CROP_FLOOR, lambda img: M.preprocess(img, offset="floor")),
                  (CROP_HALF_UP, lambda img: M.preprocess(img, offset="half_up")),
                  (BGR, lambda img: M.preprocess(img, bgr=True)),
                  (IMAGENET_NORM, lambda img: M.preprocess(img, mean=M.IMAGENET_MEAN, std=M.IMAGENET_STD)),
                  (NO_NORMALIZE, lambda img: M.preprocess(img, mean=(0, 0, 0), std=(1, 1, 1))),
                  (NO_SCALE, lambda img: M.preprocess(img, scale=False)),
                  (HWC_IMAGE, lambda img: M.preprocess(img, chw=False))],
        hints=["Let Pillow resize (its bicubic is the one torchvision uses on a PIL image) and crop; then NumPy for "
               "the arithmetic. Compute the two new sizes and the two offsets yourself, with the rounding the "
               "statement names.",
               "Pillow sizes are (width, height), NumPy arrays are [H, W, 3]; np.asarray(pil) is uint8: convert to "
               "float32 before dividing; move the channel axis first at the end.",
               "pil = Image.fromarray(img).resize((new_w, new_h), Image.Resampling.BICUBIC) with "
               "new_long = int(256 * long / short); left = int(round((new_w - 224) / 2)); "
               "pil.crop((left, top, left + 224, top + 224)); x = np.asarray(pil, np.float32) / np.float32(255); "
               "(x - np.float32(0.5)) / np.float32(0.5); x.transpose(2, 0, 1)"]),
]

FORWARD = list(EXERCISES)
BY_NAME = {e.name: e for e in EXERCISES}
# fixtures are made in this order: the full-size chain is picture -> preprocess -> stem -> token mixing -> channel mixing
BUILD_ORDER = [BY_NAME[n] for n in ["preprocess", "patchify", "stem", "layer_norm", "erf", "gelu", "linear", "mlp",
                                    "token_mixing", "channel_mixing", "mixer_block", "global_pool", "forward"]]

# the cost exercise, then the backward exercises (after the forward ones), from their own module
from .backward_exercises import BACKWARD, COST  # noqa: E402  (they use Case and Exercise, defined above)

EXERCISES = FORWARD + [COST] + BACKWARD
BY_NAME = {e.name: e for e in EXERCISES}
BUILD_ORDER = BUILD_ORDER + [COST] + BACKWARD

"""The backward exercises (<layer>_backward) and the cost exercise: statements, hints, cases, classic mistakes.

A backward exercise's function takes dout and the forward's inputs and weights, and returns the gradients:
(dx, grads), grads a dict shaped like the weights (timm's keys), as numpy_mixer.backward does. The checker
gives one verdict line per gradient, by name: "dx", "dweight", "dnorm1.weight", "dmlp_tokens.fc1.bias" ...
The answers are torch autograd's, in float64 (tight tolerance) and in float32 (the same numbers).
"""
import numpy as np

from . import mistakes as M
from .catalogue import FLOAT64, Case, Exercise  # noqa: F401  (FLOAT64: the checker's dtype hint applies here too)


def _leaves(tree, prefix):
    """Nested dicts of arrays -> {"d<prefix>key.sub": value}."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {"d" + prefix[:-1]: tree}


def split_grads(outputs):
    """The learner's return value -> {gradient name: value}; dx alone, or (dx, grads)."""
    def split(ret):
        if len(outputs) == 1:
            if isinstance(ret, tuple):
                raise ValueError(f"returned a tuple of {len(ret)}, expected one array ({outputs[0]})")
            return {outputs[0]: ret}
        if not (isinstance(ret, tuple) and len(ret) == 2 and isinstance(ret[1], dict)):
            raise ValueError(f"returned a {type(ret).__name__}, expected (dx, grads): dx an array, grads a dict "
                             "shaped like the weights (" + ", ".join(outputs[1:]) + ")")
        return {"dx": ret[0], **_leaves(ret[1], "")}
    return split


def split_counts(ret):
    """{"block_params": int, ...} -> the same, checked to be whole numbers."""
    if not isinstance(ret, dict):
        raise ValueError(f"returned a {type(ret).__name__}, expected a dict with the keys "
                         "block_params, block_macs, params, macs")
    out = {}
    for k, v in ret.items():
        if np.ndim(v) != 0 or float(v) != int(v):
            raise ValueError(f"{k} is {v!r}, expected a whole number")
        out[k] = np.asarray(int(v), np.int64)
    return out


def _bwd(exercise, case, *names):
    """(dout, x, the weights named `names`) from the fixtures."""
    def args(s):
        prefix = f"{exercise}/{case}"
        p = s.params(prefix + "/p")
        return (s[prefix + "/dout"], s[prefix + "/x"]) + tuple(p[n] for n in names)
    return args


def _cases(exercise, names, describe, square=None):
    """The float64 and float32 cases (same numbers), and a float32 square one where it tells mistakes apart."""
    cases = [Case("f64", describe + ", float64", _bwd(exercise, "f64", *names), f"{exercise}/f64",
                  rtol=1e-7, atol=1e-9),
             Case("f32", describe + ", float32", _bwd(exercise, "f32", *names), f"{exercise}/f32")]
    if square:
        cases.append(Case("square", square, _bwd(exercise, "square", *names), f"{exercise}/square"))
    return cases


def _grad_names(*trees):
    return ["dx"] + [f"d{t}" for t in trees]


_LIN = ["dx", "dweight", "dbias"]
_MLP = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
_TOKEN = ["norm1.weight", "norm1.bias"] + [f"mlp_tokens.{k}" for k in _MLP]
_CHANNEL = ["norm2.weight", "norm2.bias"] + [f"mlp_channels.{k}" for k in _MLP]

# --- hints (tests assert on these words) -------------------------------------------------------------------
BIAS_NOT_SUMMED = ("the bias gradient not summed over the batch and token axes: the bias is added to every row, so "
                   "dbias is dout summed over every axis but the last: dout.reshape(-1, out).sum(axis=0)")
BIAS_FIRST_AXIS = ("the bias gradient summed over the first axis only: sum over the batch AND token axes, every axis "
                   "but the last: dout.reshape(-1, out).sum(axis=0)")
BIAS_MEAN = "the bias gradient averaged over the rows; it is their sum: dout.reshape(-1, out).sum(axis=0)"
DX_WEIGHT_T = ("dout @ weight.T where it should be dout @ weight: the forward multiplied by weight.T, so dx = "
               "dout @ weight ([..., out] @ [out, in] -> [..., in])")
DWEIGHT_T = ("dweight transposed: x.T @ dout is [in, out]; the weight is [out, in], so dweight = dout.T @ x, with "
             "the leading axes flattened into rows")
DWEIGHT_PER_ROW = ("dweight not summed over the rows: every row adds its outer product dout[m] x[m]; sum them, "
                   "dout.reshape(-1, out).T @ x.reshape(-1, in)")
LN_NO_MEAN = ("layer_norm backward without the mean term: x_hat depends on x through the mean too; "
              "dx = rstd * (dxhat - mean(dxhat) - x_hat * mean(dxhat * x_hat)), you left out - mean(dxhat)")
LN_NO_VAR = ("layer_norm backward without the variance term: x_hat depends on x through the variance too; "
             "dx = rstd * (dxhat - mean(dxhat) - x_hat * mean(dxhat * x_hat)), "
             "you left out - x_hat * mean(dxhat * x_hat)")
LN_NEITHER = ("layer_norm backward missing the mean and the variance terms (only rstd * dxhat): "
              "dx = rstd * (dxhat - mean(dxhat) - x_hat * mean(dxhat * x_hat)), means over the last axis")
LN_NO_WEIGHT = "dout not multiplied by weight before going back through the normalisation: dxhat = dout * weight"
LN_NOT_SUMMED = ("dweight and dbias not summed over the batch and token axes: weight and bias act on every token, "
                 "so sum dout * x_hat (and dout) over every axis but the last")
GELU_NO_XPDF = ("the GELU derivative without the x * pdf(x) term: d/dx x Phi(x) = Phi(x) + x phi(x), "
                "phi(x) = exp(-x^2 / 2) / sqrt(2 pi)")
GELU_PDF_NO_X = "Phi(x) + phi(x): the product rule gives Phi(x) + x * phi(x) (the pdf times x)"
GELU_NO_DOUT = "the local derivative not multiplied by dout (the chain rule): dx = dout * (Phi(x) + x phi(x))"
GELU_TANH = ("the derivative of the tanh approximation; the exact GELU's is Phi(x) + x phi(x), "
             "phi(x) = exp(-x^2 / 2) / sqrt(2 pi)")
CE_NO_MEAN = "not divided by the batch size: the loss is the mean over the batch, so dlogits = (softmax - one_hot) / B"
CE_NO_ONE_HOT = ("softmax without the one-hot of the labels subtracted: "
                 "dlogits = (softmax(logits) - one_hot(labels)) / B")
CE_SIGN = "the sign flipped: dlogits = (softmax - one_hot) / B, the gradient of the loss (not of the log-likelihood)"
NO_SKIP = ("the residual's gradient does not flow through the skip: out = x + f(x), so dx = dout + (the gradient "
           "through f); add dout")
NOT_TRANSPOSED_BACK = ("the token-mixing gradient not transposed back: the MLP's backward gives the gradient of its "
                       "[B, C, N] input; swap axes 1 and 2 back to [B, N, C] before LayerNorm's backward")
NOT_TRANSPOSED_IN = ("dout not transposed before the token MLP's backward: the MLP ran on [B, C, N], so its backward "
                     "takes dout.swapaxes(1, 2)")
FORWARD_ORDER = ("the block's backward in forward order: token mixing ran first, so its backward runs last; go back "
                 "through channel mixing (at token mixing's output) first")
POOL_NO_1_N = "the mean's gradient without 1/N: each of the N tokens gets dout_pooled / N, not all of it"
HEAD_DWEIGHT_SUM = ("dweight from the sum over the tokens; the head's input is their mean: dweight = dout.T @ "
                    "x.mean(axis=1)")

_DX_HINT = "dx = dout @ weight: [..., out] @ [out, in] (" + DX_WEIGHT_T + ")"


def _both_halves(**kw):
    return dict(token=kw, channel=kw)


BACKWARD = [
    Exercise(
        "linear_backward", "7 backward", "dx, dweight, dbias of torch's Linear",
        """\
linear_backward(dout, x, weight, bias): the gradients of torch's Linear, y = x weight^T + bias, given
dout = dloss/dy.

    dout: [..., out], x: [..., in], weight: [out, in], bias: [out]
    ->  (dx [..., in], {"weight": dweight [out, in], "bias": dbias [out]})

Each gradient has the shape of what it is the gradient of. The leading axes of x (batch, tokens) are rows
that all use the same weight and bias: a weight's or bias's gradient is the SUM of what every row
contributes. y[m, j] = sum_i x[m, i] weight[j, i] + bias[j], so dy[m, j] / dweight[j, i] = x[m, i] and
dy[m, j] / dbias[j] = 1.
Tiny example: one row x = [1, 2], weight = [[3, 4]] (out 1, in 2), dout = [5]: dx = [15, 20],
dweight = [[5, 10]], dbias = [5].
Checked against torch autograd on x [2, 5, 24] -> 16, in float64 and float32, and on a square weight [24, 24]
(where the wrong orientation runs, and is wrong).""",
        _cases("linear_backward", ("weight", "bias"), "x [2, 5, 24], weight [16, 24]",
               square="x [2, 5, 24], weight [24, 24], float32"),
        rtol=1e-4, atol=1e-5, outputs=_LIN, split=split_grads(_LIN),
        mistakes=[(DX_WEIGHT_T, lambda d, x, w, b: M.linear_backward(d, x, w, b, dx_with="weight.T")),
                  (DWEIGHT_T, lambda d, x, w, b: M.linear_backward(d, x, w, b, dweight="transposed")),
                  (DWEIGHT_PER_ROW, lambda d, x, w, b: M.linear_backward(d, x, w, b, dweight="per_row")),
                  (BIAS_NOT_SUMMED, lambda d, x, w, b: M.linear_backward(d, x, w, b, dbias="none")),
                  (BIAS_FIRST_AXIS, lambda d, x, w, b: M.linear_backward(d, x, w, b, dbias="first")),
                  (BIAS_MEAN, lambda d, x, w, b: M.linear_backward(d, x, w, b, dbias="mean"))],
        error_hint=_DX_HINT,
        hints=["Write y for one row and one output unit, differentiate by hand, then sum over the rows whatever "
               "is shared by all rows (the weight and the bias).",
               "dx [..., in] = dout [..., out] times a matrix [out, in]; dweight [out, in] = (rows of dout)^T "
               "[out, M] times (rows of x) [M, in], M = all leading axes flattened; dbias [out] = dout summed over "
               "the M rows.",
               "dx = dout @ weight; d2 = dout.reshape(-1, out); x2 = x.reshape(-1, in); dweight = d2.T @ x2; "
               "dbias = d2.sum(axis=0)"]),
    Exercise(
        "layer_norm_backward", "7 backward", "the three-term LayerNorm gradient",
        """\
layer_norm_backward(dout, x, weight, bias, eps=1e-6): the gradients of layer_norm (biased variance, eps
inside the square root, over the last axis), given dout.

    dout, x: [..., C], weight, bias: [C]  ->  (dx [..., C], {"weight": [C], "bias": [C]})

With x_hat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps), y = x_hat * weight + bias:
dweight and dbias sum over every token (every axis but the last), as in linear_backward. dx is the subtle
one: x reaches x_hat directly, through the mean and through the variance, three paths. With
dxhat = dout * weight, dx is rstd times (dxhat, minus its mean over the channels, minus x_hat times the
mean of dxhat * x_hat). The two subtracted terms are the mean's and the variance's paths.
A check you can do: dx sums to zero over the channels of each token (a shift of x changes nothing).
Checked against torch autograd (timm's LayerNorm, eps 1e-6) on x [2, 16, 24] in float64 and float32.""",
        _cases("layer_norm_backward", ("weight", "bias"), "x [2, 16, 24]"),
        rtol=1e-4, atol=1e-5, outputs=_LIN, split=split_grads(_LIN),
        mistakes=[(LN_NO_MEAN, lambda d, x, w, b, eps=1e-6: M.layer_norm_backward(d, x, w, b, terms="no_mean")),
                  (LN_NO_VAR, lambda d, x, w, b, eps=1e-6: M.layer_norm_backward(d, x, w, b, terms="no_var")),
                  (LN_NEITHER, lambda d, x, w, b, eps=1e-6: M.layer_norm_backward(d, x, w, b, terms="neither")),
                  (LN_NO_WEIGHT, lambda d, x, w, b, eps=1e-6: M.layer_norm_backward(d, x, w, b, use_weight=False)),
                  (LN_NOT_SUMMED, lambda d, x, w, b, eps=1e-6: M.layer_norm_backward(d, x, w, b, sums="none"))],
        hints=["Recompute the forward's pieces (mean, rstd, x_hat); dweight and dbias are sums over the tokens; for "
               "dx, follow the three paths from x to x_hat.",
               "Every mean is over axis -1 with keepdims (shape [..., 1]); dxhat = dout * weight is [..., C]; "
               "dweight = (dout * x_hat) summed over all axes but the last, [C].",
               "dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - x_hat * (dxhat * x_hat).mean(-1, "
               "keepdims=True)); dweight = (dout * x_hat).reshape(-1, C).sum(0); dbias = dout.reshape(-1, C).sum(0)"]),
    Exercise(
        "gelu_backward", "7 backward", "the exact GELU's derivative",
        """\
gelu_backward(dout, x): the gradient of the exact GELU, gelu(x) = x * Phi(x), given dout.

    dout, x: any shape (the same), float  ->  dx, same shape and dtype

By the product rule the derivative of x * Phi(x) is Phi(x) + x * phi(x), where phi is the standard normal
density, phi(x) = exp(-x^2 / 2) / sqrt(2 pi) (the derivative of Phi). Elementwise, times dout (the chain rule).
Worked example: at x = 0 the derivative is 1/2; at x = 1 it is 0.8413 + 0.2420 = 1.0833 (GELU is steeper
than the identity there); at x = -1 it is 0.1587 - 0.2420 = -0.0833.
Checked against torch autograd (nn.GELU(), exact) on x from -6 to 6, in float64 and float32.""",
        [Case("f64", "x [8, 100], float64", lambda s: (s["gelu_backward/f64/dout"], s["gelu_backward/f64/x"]),
              "gelu_backward/f64", rtol=1e-7, atol=1e-9),
         Case("f32", "x [8, 100], float32", lambda s: (s["gelu_backward/f32/dout"], s["gelu_backward/f32/x"]),
              "gelu_backward/f32")],
        rtol=1e-4, atol=1e-5, outputs=["dx"], split=split_grads(["dx"]),
        mistakes=[(GELU_NO_XPDF, lambda d, x: M.gelu_backward(d, x, "no_x_pdf")),
                  (GELU_PDF_NO_X, lambda d, x: M.gelu_backward(d, x, "pdf_no_x")),
                  (GELU_NO_DOUT, lambda d, x: M.gelu_backward(d, x, "no_dout")),
                  (GELU_TANH, lambda d, x: M.gelu_backward(d, x, "tanh"))],
        hints=["Product rule on x * Phi(x); Phi's derivative is the normal density.",
               "Elementwise: every array is x's shape; keep x's dtype (float32 constants for float32 inputs).",
               "Phi = 0.5 * (1 + erf(x / sqrt 2)); phi = exp(-0.5 * x * x) / sqrt(2 pi); dx = dout * (Phi + x * phi), "
               "with the constants as x.dtype.type(...)"]),
    Exercise(
        "softmax_cross_entropy_backward", "7 backward", "dlogits of the mean cross-entropy",
        """\
softmax_cross_entropy_backward(logits, labels): the gradient of the mean cross-entropy loss (as
torch.nn.functional.cross_entropy) with respect to the logits; dloss = 1, so there is no dout.

    logits: [B, K] float, labels: [B] int  ->  dlogits [B, K], the logits' dtype

loss = mean over the batch of -log softmax(logits)[b, labels[b]]. For one example, the gradient of
-log softmax(z)[y] is softmax(z) - one_hot(y): push the right class up, the others down in proportion to
their probability. The mean over B examples divides each row by B.
Worked example: B = 1, logits [0, 0], label 1: softmax [0.5, 0.5], dlogits = [0.5, -0.5].
Compute the softmax stably: subtract each row's maximum first.
Checked against torch autograd on logits [4, 10] in float64 and float32.""",
        [Case("f64", "logits [4, 10], float64", lambda s: (s["softmax_cross_entropy_backward/f64/logits"],
                                                           s["softmax_cross_entropy_backward/f64/labels"]),
              "softmax_cross_entropy_backward/f64", rtol=1e-7, atol=1e-9),
         Case("f32", "logits [4, 10], float32", lambda s: (s["softmax_cross_entropy_backward/f32/logits"],
                                                           s["softmax_cross_entropy_backward/f32/labels"]),
              "softmax_cross_entropy_backward/f32")],
        rtol=1e-4, atol=1e-6, outputs=["dlogits"], split=split_grads(["dlogits"]),
        mistakes=[(CE_NO_MEAN, lambda z, y: M.softmax_cross_entropy_backward(z, y, "no_mean")),
                  (CE_NO_ONE_HOT, lambda z, y: M.softmax_cross_entropy_backward(z, y, "no_one_hot")),
                  (CE_SIGN, lambda z, y: M.softmax_cross_entropy_backward(z, y, "sign"))],
        hints=["The softmax, minus 1 at the right class of each row, divided by the batch size.",
               "Row-wise over the last axis (K classes), keepdims for the max and the sum; labels index one entry "
               "per row: [np.arange(B), labels].",
               "z = logits - logits.max(-1, keepdims=True); p = np.exp(z) / np.exp(z).sum(-1, keepdims=True); "
               "p[np.arange(B), labels] -= 1; return p / B (B as logits.dtype)"]),
    Exercise(
        "token_mixing_backward", "7 backward", "back through the residual, the transposes, the token MLP, LayerNorm",
        """\
token_mixing_backward(dout, x, norm1, mlp_tokens): the gradients of token_mixing,
out = x + (mlp_tokens applied to layer_norm(x) with axes 1 and 2 swapped, swapped back), given dout.

    dout, x: [B, N, C]  ->  (dx [B, N, C], {"norm1": {"weight", "bias"},
                                           "mlp_tokens": {"fc1": {"weight", "bias"}, "fc2": {"weight", "bias"}}})

Go backwards through the forward, one step at a time, with what you wrote: the residual sends dout to x
unchanged AND into the branch; a transpose's backward is the same transpose; the MLP's backward is
linear_backward, gelu_backward, linear_backward (recompute its hidden values); then layer_norm_backward;
add the two paths into x. A weight's gradient sums over every row that used it: for mlp_tokens the rows
are the B * C (batch, channel) pairs.
Checked against torch autograd on N=16, C=24 in float64 and float32, and on N = C = 16 (float32), where a
missing transpose runs.""",
        _cases("token_mixing_backward", ("norm1", "mlp_tokens"), "x [2, 16, 24]", square="x [2, 16, 16], float32"),
        rtol=1e-4, atol=1e-5, outputs=_grad_names(*_TOKEN), split=split_grads(_grad_names(*_TOKEN)),
        mistakes=[(NO_SKIP, lambda d, x, n, m: M.token_mixing_backward(d, x, n, m, skip=False)),
                  (NOT_TRANSPOSED_BACK, lambda d, x, n, m: M.token_mixing_backward(d, x, n, m, transpose_back=False)),
                  (NOT_TRANSPOSED_IN, lambda d, x, n, m: M.token_mixing_backward(d, x, n, m, transpose_in=False)),
                  (LN_NO_MEAN, lambda d, x, n, m: M.token_mixing_backward(d, x, n, m, ln_terms="no_mean")),
                  (LN_NO_VAR, lambda d, x, n, m: M.token_mixing_backward(d, x, n, m, ln_terms="no_var")),
                  (GELU_NO_XPDF, lambda d, x, n, m: M.token_mixing_backward(d, x, n, m, gelu_kind="no_x_pdf")),
                  (BIAS_FIRST_AXIS, lambda d, x, n, m: M.token_mixing_backward(d, x, n, m, dbias="first")),
                  (BIAS_NOT_SUMMED, lambda d, x, n, m: M.token_mixing_backward(d, x, n, m, dbias="none"))],
        error_hint=NOT_TRANSPOSED_BACK,
        hints=["Write the forward as a chain of small steps (norm, transpose, MLP, transpose, add) and undo them from "
               "the last to the first, each with its own backward; the residual adds dout to dx at the end.",
               "dout [B, N, C] -swap-> [B, C, N] -mlp backward-> [B, C, N] (and the MLP's grads) -swap back-> "
               "[B, N, C] -layer_norm backward-> [B, N, C] (and norm1's grads); dx = dout + that.",
               "y = layer_norm(x, **norm1).swapaxes(1, 2); h = y @ W1.T + b1; a = gelu(h); then "
               "linear_backward(dout.swapaxes(1, 2), a, W2, b2), gelu_backward, linear_backward(dh, y, W1, b1), "
               ".swapaxes(1, 2), layer_norm_backward(..., x, **norm1); dx = dout + dx_norm"]),
    Exercise(
        "channel_mixing_backward", "7 backward", "back through the residual, the channel MLP, LayerNorm",
        """\
channel_mixing_backward(dout, x, norm2, mlp_channels): the gradients of channel_mixing,
out = x + mlp_channels(layer_norm(x)), given dout.

    dout, x: [B, N, C]  ->  (dx [B, N, C], {"norm2": {"weight", "bias"},
                                           "mlp_channels": {"fc1": {"weight", "bias"}, "fc2": {"weight", "bias"}}})

As token mixing's backward without the transposes: the residual passes dout to x and into the branch; the
MLP's backward (fc2, GELU, fc1), then LayerNorm's; add the two paths. Here the rows that share the MLP's
weights are the B * N tokens.
Checked against torch autograd on N=16, C=24, H=48, in float64 and float32.""",
        _cases("channel_mixing_backward", ("norm2", "mlp_channels"), "x [2, 16, 24]"),
        rtol=1e-4, atol=1e-5, outputs=_grad_names(*_CHANNEL), split=split_grads(_grad_names(*_CHANNEL)),
        mistakes=[(NO_SKIP, lambda d, x, n, m: M.channel_mixing_backward(d, x, n, m, skip=False)),
                  (LN_NO_MEAN, lambda d, x, n, m: M.channel_mixing_backward(d, x, n, m, ln_terms="no_mean")),
                  (LN_NO_VAR, lambda d, x, n, m: M.channel_mixing_backward(d, x, n, m, ln_terms="no_var")),
                  (GELU_NO_XPDF, lambda d, x, n, m: M.channel_mixing_backward(d, x, n, m, gelu_kind="no_x_pdf")),
                  (BIAS_FIRST_AXIS, lambda d, x, n, m: M.channel_mixing_backward(d, x, n, m, dbias="first")),
                  (BIAS_NOT_SUMMED, lambda d, x, n, m: M.channel_mixing_backward(d, x, n, m, dbias="none"))],
        error_hint=_DX_HINT,
        hints=["The same chain as token mixing's backward, without the transposes.",
               "dout [B, N, C] -fc2 backward-> [B, N, H] -GELU backward-> [B, N, H] -fc1 backward-> [B, N, C] "
               "-layer_norm backward-> [B, N, C]; dx = dout + that.",
               "y = layer_norm(x, **norm2); h = y @ W1.T + b1; da, dfc2 = linear_backward(dout, gelu(h), W2, b2); "
               "dh = gelu_backward(da, h); dy, dfc1 = linear_backward(dh, y, W1, b1); "
               "dx_norm, dnorm2 = layer_norm_backward(dy, x, **norm2); dx = dout + dx_norm"]),
    Exercise(
        "mixer_block_backward", "7 backward", "channel mixing's backward, then token mixing's",
        """\
mixer_block_backward(dout, x, norm1, mlp_tokens, norm2, mlp_channels): the gradients of mixer_block
(token mixing, then channel mixing), given dout.

    dout, x: [B, N, C]  ->  (dx [B, N, C], grads with the keys norm1, mlp_tokens, norm2, mlp_channels)

Last in, first out: channel mixing ran last, so its backward runs first, at ITS input (token mixing's
output, which you recompute); the dx it returns is the dout of token mixing's backward. Each half's
residual carries its own dout through.
Checked against torch autograd (timm's MixerBlock) on N=16, C=24 in float64 and float32, and on N = C = 16
(float32).""",
        _cases("mixer_block_backward", ("norm1", "mlp_tokens", "norm2", "mlp_channels"), "x [2, 16, 24]",
               square="x [2, 16, 16], float32"),
        rtol=1e-4, atol=1e-5, outputs=_grad_names(*_TOKEN, *_CHANNEL), split=split_grads(_grad_names(*_TOKEN, *_CHANNEL)),
        mistakes=[(FORWARD_ORDER, lambda d, x, *p: M.mixer_block_backward(d, x, *p, order="forward_order")),
                  (NO_SKIP + " (in token mixing)",
                   lambda d, x, *p: M.mixer_block_backward(d, x, *p, token=dict(skip=False))),
                  (NO_SKIP + " (in channel mixing)",
                   lambda d, x, *p: M.mixer_block_backward(d, x, *p, channel=dict(skip=False))),
                  (NO_SKIP + " (in both halves)",
                   lambda d, x, *p: M.mixer_block_backward(d, x, *p, **_both_halves(skip=False))),
                  (NOT_TRANSPOSED_BACK,
                   lambda d, x, *p: M.mixer_block_backward(d, x, *p, token=dict(transpose_back=False))),
                  (LN_NO_MEAN, lambda d, x, *p: M.mixer_block_backward(d, x, *p, **_both_halves(ln_terms="no_mean"))),
                  (LN_NO_VAR, lambda d, x, *p: M.mixer_block_backward(d, x, *p, **_both_halves(ln_terms="no_var"))),
                  (GELU_NO_XPDF,
                   lambda d, x, *p: M.mixer_block_backward(d, x, *p, **_both_halves(gelu_kind="no_x_pdf")))],
        error_hint=NOT_TRANSPOSED_BACK,
        hints=["Your two halves' backwards, in reverse order; the second needs the input channel mixing saw.",
               "mid = token_mixing(x) [B, N, C]; channel_mixing_backward(dout, mid, ...) -> dmid [B, N, C]; "
               "token_mixing_backward(dmid, x, ...) -> dx; merge the two grads dicts.",
               "mid = token_mixing(x, norm1, mlp_tokens); dmid, g2 = channel_mixing_backward(dout, mid, norm2, "
               "mlp_channels); dx, g1 = token_mixing_backward(dmid, x, norm1, mlp_tokens); return dx, {**g1, **g2}"]),
    Exercise(
        "global_pool_head_backward", "7 backward", "back through the head and the mean over tokens",
        """\
global_pool_head_backward(dout, x, weight, bias): the gradients of the model's end, logits =
linear(mean of x over the tokens, weight, bias) (timm's forward_head), given dout = dloss/dlogits.

    dout: [B, K], x: [B, N, C], weight: [K, C], bias: [K]  ->  (dx [B, N, C], {"weight": [K, C], "bias": [K]})

The head is a linear layer on the pooled features (use linear_backward's rules with the pooled x as its
input). The mean's backward: every one of the N tokens contributed 1/N of the mean, so each gets 1/N of the
pooled gradient, the same for all tokens.
Worked example: N = 4 tokens, a pooled gradient [8, -4] gives every token [2, -1].
Checked against torch autograd on x [2, 16, 24], K = 10, in float64 and float32.""",
        _cases("global_pool_head_backward", ("weight", "bias"), "x [2, 16, 24], K = 10"),
        rtol=1e-4, atol=1e-5, outputs=_LIN, split=split_grads(_LIN),
        mistakes=[(POOL_NO_1_N, lambda d, x, w, b: M.global_pool_head_backward(d, x, w, b, divide=False)),
                  (HEAD_DWEIGHT_SUM, lambda d, x, w, b: M.global_pool_head_backward(d, x, w, b, dweight_from="sum"))],
        error_hint=_DX_HINT,
        hints=["Back through the head (a linear layer whose input is the pooled x), then spread the pooled gradient "
               "evenly over the tokens.",
               "pooled [B, C]; dpooled = dout [B, K] @ weight [K, C] -> [B, C]; dweight = dout.T [K, B] @ pooled "
               "[B, C]; dbias = dout summed over B; dx [B, N, C] = dpooled / N broadcast over the N tokens.",
               "pooled = x.mean(axis=1); dpooled = dout @ weight; dx = np.repeat(dpooled[:, None, :] / N, N, axis=1) "
               "(or np.broadcast_to(...).copy()); dweight = dout.T @ pooled; dbias = dout.sum(axis=0)"]),
]


# --- cost: parameters and multiply-adds ------------------------------------------------------------------

def _config(**kw):
    keys = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "tokens_dim", "channels_dim", "num_classes")
    return dict(zip(keys, (kw[k] for k in keys)))


COST_CONFIGS = {
    "b16": _config(img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, tokens_dim=384,
                   channels_dim=3072, num_classes=1000),  # mixer_b16_224: 59,880,472 parameters
    "s32": _config(img_size=224, patch_size=32, in_chans=3, embed_dim=512, depth=8, tokens_dim=256,
                   channels_dim=2048, num_classes=1000),  # mixer_s32_224
    "tiny": _config(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, tokens_dim=16, channels_dim=128,
                    num_classes=10),  # the whole-model exercise's tiny Mixer
}
_COST_CASES = {"b16": "mixer_b16_224", "s32": "mixer_s32_224",
               "tiny": "the tiny Mixer (32 x 32, P=8, C=32, 2 blocks, K=10)"}
_COUNTS = ["block_params", "block_macs", "params", "macs"]

NO_BIASES = "the biases left out: every Linear (and the stem conv) has one bias per output unit"
NO_NORMS = "the LayerNorm parameters left out: each LayerNorm has a weight and a bias of C values (two per block)"
NO_FINAL_NORM_PARAMS = "the final LayerNorm (params['norm'], 2C parameters) left out"
NO_HEAD = "the head left out: K x C weights and K biases, and K x C multiply-adds"
NO_STEM = "the stem left out: a C x 3 x P x P conv (plus C biases) applied to each of the N patches"
FLOPS_NOT_MACS = ("FLOPs, not multiply-adds: a multiply-add counts once here (timm quotes 12.6 GMACs for "
                  "mixer_b16_224), a FLOP count gives twice as much")
TOKEN_MACS_PER_TOKEN = ("the token MLP counted once per token; it runs once per CHANNEL, on a vector of N tokens: "
                        "C x (N x T + T x N) multiply-adds")
ONE_BLOCK = "one block counted; the model has `depth` blocks"
BIAS_MACS = "the bias adds counted as multiply-adds; count the matrix products only (stem, the four Linears, head)"

COST = Exercise(
    "cost", "6 cost", "count the parameters and multiply-adds of a block and of the whole model",
    """\
cost(config): how big and how expensive a Mixer is: the parameter count and the multiply-adds (MACs) of
one MixerBlock and of the whole MlpMixer, for one image, exactly.

    config: {"img_size", "patch_size", "in_chans", "embed_dim" (C), "depth", "tokens_dim" (T),
             "channels_dim" (H), "num_classes" (K)}
    ->  {"block_params": int, "block_macs": int, "params": int, "macs": int}

Parameters: every number timm's model holds: the stem conv's weight and bias, each block's two LayerNorms
(weight and bias each) and two MLPs (fc1 and fc2, weight and bias each), the final LayerNorm, the head.
MACs: the multiply-adds of the matrix products only, the way timm's 12.6 GMACs for mixer_b16_224 is counted:
a Linear from `in` to `out` applied to R rows costs R * in * out; the stem conv is such a product; the
LayerNorms, GELUs, bias adds, residual adds and the pooling are not counted (well under 1%).
mixer_b16_224 has 59,880,472 parameters. Think about how many rows each MLP is applied to.
Checked exactly against timm's model (numel) and torch's FlopCounterMode (FLOPs / 2) for mixer_b16_224,
mixer_s32_224 and the tiny Mixer of the whole-model exercise.""",
    [Case(name, _COST_CASES[name], lambda s, cfg=cfg: (dict(cfg),), f"cost/{name}")
     for name, cfg in COST_CONFIGS.items()],
    rtol=0, atol=0, outputs=_COUNTS, split=split_counts,
    mistakes=[(NO_BIASES, lambda c: M.cost(c, biases=False)),
              (NO_NORMS, lambda c: M.cost(c, norms=False)),
              (NO_FINAL_NORM_PARAMS, lambda c: M.cost(c, final_norm=False)),
              (NO_HEAD, lambda c: M.cost(c, head=False)),
              (NO_STEM, lambda c: M.cost(c, stem=False)),
              (FLOPS_NOT_MACS, lambda c: M.cost(c, flops=True)),
              (TOKEN_MACS_PER_TOKEN, lambda c: M.cost(c, token_rows="tokens")),
              (ONE_BLOCK, lambda c: M.cost(c, blocks=1)),
              (BIAS_MACS, lambda c: M.cost(c, bias_macs=True))],
    hints=["A Linear(in, out) holds in * out + out numbers and costs in * out multiply-adds per row it is applied "
           "to. List every Linear (and the stem conv, a Linear on flattened patches) with its in, out and rows.",
           "N = (img_size / patch_size)^2 patches. The token MLP is Linear(N, T) then Linear(T, N), applied to C "
           "rows per image (one per channel); the channel MLP is Linear(C, H), Linear(H, C) on N rows; the stem "
           "is Linear(3 P P, C) on N rows; the head Linear(C, K) on 1 row (after pooling).",
           "block_params = 2 * 2C + (N T + T + T N + N) + (C H + H + H C + C); block_macs = C * 2 N T + N * 2 C H; "
           "params = (3 P P C + C) + depth * block_params + 2C + (C K + K); macs = N * 3 P P * C + depth * "
           "block_macs + C K"])

"""Fit the coefficients of numpy_mixer.fast's GELU and print them.

The fast path computes GELU in one branch-free form (erf is odd, so x Phi(x) = relu(x) - |x| Phi(-|x|)):

    GELU(x) = relu(x) - |x| exp(-x^2/2) r(w),   w = 1 / (S + |x|),   r(w) ~ erfcx(|x| / sqrt 2) / 2

with erfcx(u) = exp(u^2) erfc(u), which in the variable w is nearly a low polynomial on all of
[0, inf). The fit is a weighted minimax (Lawson's iteratively reweighted least squares) of the GELU
error |x| exp(-x^2/2) |r - erfcx/2| divided by min(1, |x|): relative to x below |x| = 1, absolute
above. Coefficients are rounded to float32 one at a time, highest power first, refitting the rest
after each. S is a choice, not a fitted value: `--scan` fits each S from 2.6 to 3.6 and prints the
float32 error of the whole formula: 2.5e-7 to 2.7e-7 for S in 3.1-3.2, more on either side (up to
4.4e-7); 3.15 is the middle of that flat minimum.

    python tools/fit_fast_gelu.py            # the coefficients for S
    python tools/fit_fast_gelu.py --scan     # the error for each S (about a minute)
"""
import math
import sys

import numpy as np

N_COEFS = 6
S = 3.15  # w = 1 / (S + |x|): two passes (an add, a divide); chosen with --scan


def fit(V, f, weight, fixed, iterations=200):
    """Minimax-weighted least squares for the free coefficients; fixed: {index: value}."""
    free = [k for k in range(V.shape[1]) if k not in fixed]
    rhs = f - sum(V[:, k] * c for k, c in fixed.items())
    lawson = np.ones_like(f)
    for _ in range(iterations):
        w = weight * np.sqrt(lawson)
        solution, *_ = np.linalg.lstsq(V[:, free] * w[:, None], rhs * w, rcond=None)
        coefs = np.zeros(V.shape[1])
        coefs[free] = solution
        for k, c in fixed.items():
            coefs[k] = c
        error = np.abs(weight * (V @ coefs - f))
        lawson *= error + 1e-300
        lawson /= lawson.sum()
    return coefs, error.max()


def coefficients(s):
    """(float32 coefficients of r, lowest power first; weighted fit error) for w = 1 / (s + |x|)."""
    a = np.linspace(0, 12, 40001)  # |x|; past 12 the correction is far below float32 resolution
    u = a / math.sqrt(2)
    half_erfcx = np.array([math.erfc(v) * math.exp(v * v) / 2 for v in u])
    V = np.vander(1 / (s + a), N_COEFS, increasing=True)
    weight = np.maximum(a, 1) * np.exp(-a * a / 2) + 1e-9  # (GELU error / min(1, |x|)) / (error of r)
    coefs, error = fit(V, half_erfcx, weight, {})
    fixed = {}
    for k in range(N_COEFS - 1, -1, -1):  # round to float32 from the highest power down, refitting the rest
        fixed[k] = float(np.float32(coefs[k]))
        if len(fixed) < N_COEFS:
            coefs, error = fit(V, half_erfcx, weight, fixed)
    return [fixed[k] for k in range(N_COEFS)], error


def float32_error(s, coefs):
    """max |GELU error| / min(1, |x|) of the whole formula evaluated in float32, as numpy_mixer.fast does."""
    x = np.concatenate([np.linspace(-10, 10, 400_000), np.geomspace(1e-6, 10, 200_000)]).astype(np.float32)  # no 0
    a = np.abs(x)
    e = np.exp(a * a * np.float32(-0.5))
    w = np.float32(1) / (a + np.float32(s))
    r = np.zeros_like(x)
    for c in coefs[::-1]:
        r = r * w + np.float32(c)
    got = np.maximum(x, np.float32(0)) - r * e * a
    x64 = x.astype(np.float64)
    exact = x64 * 0.5 * (1 + np.frompyfunc(math.erf, 1, 1)(x64 / math.sqrt(2)).astype(np.float64))
    return float((np.abs(got - exact) / np.minimum(1, np.abs(x64))).max())


def main(argv):
    if "--scan" in argv:
        for s in np.arange(2.6, 3.61, 0.05):
            coefs, _ = coefficients(s)
            print(f"S = {s:.2f}: max |GELU error| / min(1, |x|) in float32 = {float32_error(s, coefs):.3g}")
        return
    coefs, error = coefficients(S)
    print(f"weighted fit error (float64 evaluation) {error:.3g}; float32 error {float32_error(S, coefs):.3g}")
    print(f"S = {np.float32(S)!r}")
    print("_GELU_R =", coefs)


if __name__ == "__main__":
    main(sys.argv[1:])

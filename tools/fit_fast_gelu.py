"""Fit the coefficients of numpy_mixer.fast's GELU and print them.

The fast path computes GELU in one branch-free form, a logistic function of a polynomial:

    GELU(x) = x Phi(x) = x / (1 + exp(x q(x^2))),   q(x^2) ~ log(Phi(-x) / Phi(x)) / x

The exact exponent log(Phi(-x) / Phi(x)) / x = -2 artanh(erf(x / sqrt 2)) / x is even and smooth: about
-1.596 (= -2 sqrt(2 / pi)) at 0, growing like -x / 2 far out, where exp saturates to 0 or infinity and the
error no longer depends on it. On |x| <= 6 a polynomial of degree 6 in x^2 holds it (degree 5 has the
wrong sign past 6). The fit is a weighted minimax (Lawson's iteratively reweighted least squares) of the
GELU error x^2 s (1 - s) |q - exact| (s the logistic value) divided by min(1, |x|): relative to x below
|x| = 1, absolute above. Coefficients are rounded to float32 one at a time, highest power first,
refitting the rest after each. The script then evaluates the whole formula in float32, pass by pass as
fast.gelu_ does, and prints its error.

    python tools/fit_fast_gelu.py        # the coefficients, lowest power first, and the float32 error
"""
import math
import sys

import numpy as np

DEGREE = 6  # in x^2
X_MAX = 6.0  # the fit's range of |x|: past it, exp(x q) is 0 or infinity in float32 whatever q is


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


def coefficients():
    """(float32 coefficients of q, lowest power of x^2 first; weighted fit error)."""
    x = np.linspace(1e-4, X_MAX, 60001)
    tail = np.frompyfunc(lambda v: math.erfc(v / math.sqrt(2)) / 2, 1, 1)(x).astype(np.float64)  # Phi(-x)
    exact = np.log(tail / (1 - tail)) / x
    s = 1 - tail
    weight = x * x * s * (1 - s) / np.minimum(1, x) + 1e-12
    V = np.vander(x * x, DEGREE + 1, increasing=True)
    coefs, error = fit(V, exact, weight, {})
    fixed = {}
    for k in range(DEGREE, -1, -1):  # round to float32 from the highest power down, refitting the rest
        fixed[k] = float(np.float32(coefs[k]))
        if len(fixed) <= DEGREE:
            coefs, error = fit(V, exact, weight, fixed)
    return [fixed[k] for k in range(DEGREE + 1)], error


def float32_gelu(x, coefs):
    """The formula in float32, in fast.gelu_'s order of operations."""
    q = [np.float32(c) for c in coefs]
    u = x * x
    r = u * q[-1] + q[-2]
    for c in q[-3::-1]:
        r = r * u + c
    with np.errstate(over="ignore"):
        return x / (np.exp(r * x) + np.float32(1))


def main(argv):
    coefs, error = coefficients()
    x = np.concatenate([np.linspace(-10, 10, 400_000), np.geomspace(1e-6, 10, 200_000),
                        -np.geomspace(1e-6, 10, 200_000)]).astype(np.float32)
    x64 = x.astype(np.float64)
    exact = x64 * 0.5 * (1 + np.frompyfunc(math.erf, 1, 1)(x64 / math.sqrt(2)).astype(np.float64))
    err = np.abs(float32_gelu(x, coefs) - exact)
    print(f"weighted fit error (float64) {error:.3g}; float32 GELU error: {(err / np.maximum(1, np.abs(x64))).max():.3g}"
          f" x max(1, |x|), {(err / np.abs(x64))[np.abs(x) < 0.8].max():.3g} x |x| below 0.8")
    print("_GELU_Q =", coefs)


if __name__ == "__main__":
    main(sys.argv[1:])

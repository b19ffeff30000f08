"""Fit the coefficients of numpy_mixer.fast's GELU and print them.

The fast path computes GELU in one branch-free form (erf is odd, so x Phi(x) = relu(x) - |x| Phi(-|x|)):

    GELU(x) = relu(x) - |x| q(w),   w = 1 / (S + |x|),   q(w) ~ exp(-x^2/2) / 2 * erfcx(|x| / sqrt 2)

with erfcx(u) = exp(u^2) erfc(u), which in the variable w is nearly a low polynomial on all of
[0, inf). The fast path evaluates exp(-x^2/2) * r(w) with r(w) ~ erfcx / 2. The fit is a weighted
minimax (Lawson's iteratively reweighted least squares) of the GELU error itself,
|x| exp(-x^2/2) |r - erfcx/2|; coefficients are rounded to float32 one at a time, highest power
first, refitting the rest after each. Run: python tools/fit_fast_gelu.py
"""
import math

import numpy as np

N_COEFS = 6
S = 3.15  # w = 1 / (S + |x|): two passes (an add, a divide); S chosen for the smallest float32 error


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


def main():
    a = np.linspace(0, 12, 40001)  # |x|; past 12 the correction is far below float32 resolution
    u = a / math.sqrt(2)
    half_erfcx = np.array([math.erfc(v) * math.exp(v * v) / 2 for v in u])
    V = np.vander(1 / (S + a), N_COEFS, increasing=True)
    weight = np.maximum(a, 1) * np.exp(-a * a / 2) + 1e-9  # GELU error / max(1, |x|) = this x error of r
    coefs, error = fit(V, half_erfcx, weight, {})
    fixed = {}
    for k in range(N_COEFS - 1, -1, -1):  # round to float32 from the highest power down, refitting the rest
        fixed[k] = float(np.float32(coefs[k]))
        if len(fixed) < N_COEFS:
            coefs, error = fit(V, half_erfcx, weight, fixed)
    print(f"weighted fit error (float64 evaluation) {error:.3g}")
    print(f"S = {np.float32(S)!r}")
    print("_GELU_R =", [float(np.float32(fixed[k])) for k in range(N_COEFS)])


if __name__ == "__main__":
    main()

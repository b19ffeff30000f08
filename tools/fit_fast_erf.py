"""Fit the 5 coefficients of the large form of numpy_mixer.fast's erf and print them.

  |u| >= 1:  erf(u) = 1 - exp(-u^2) * r(w),  w = 1 / (1 + u/2),  r(w) ~ erfcx(u) = exp(u^2) erfc(u)

In the variable w, erfcx on [1, 4] is nearly a low polynomial: 5 coefficients reach what 13 do in
powers of (u - mid) in layers.erf. The fit is a weighted minimax (Lawson's iteratively reweighted
least squares) of the erf error itself, exp(-u^2) |r - erfcx|; coefficients are then rounded to
float32 one at a time, highest first, refitting the rest after each. Run: python tools/fit_fast_erf.py
"""
import math

import numpy as np

N_COEFS, P = 5, 0.5


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
    u = np.linspace(1, 4, 30001)
    erfcx = np.array([math.erfc(v) * math.exp(v * v) for v in u])
    V = np.vander(1 / (1 + P * u), N_COEFS, increasing=True)
    weight = np.exp(-u * u)  # the erf error is exp(-u^2) times the error of r
    coefs, error = fit(V, erfcx, weight, {})
    fixed = {}
    for k in range(N_COEFS - 1, -1, -1):  # round to float32 from the highest power down, refitting the rest
        fixed[k] = float(np.float32(coefs[k]))
        if len(fixed) < N_COEFS:
            coefs, error = fit(V, erfcx, weight, fixed)
    print(f"fit error (float64 evaluation) {error:.3g}")
    print("_LARGE =", [float(np.float32(fixed[k])) for k in range(N_COEFS)])


if __name__ == "__main__":
    main()

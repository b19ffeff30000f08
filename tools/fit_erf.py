"""Fit the erf coefficients used in numpy_mixer/layers.py and print them.

erf is split in two, so that every Horner sum has terms of falling size:
  |x| < 1:   erf(x) = x + x * p(x^2),              p(z) ~ erf(x)/x - 1
  |x| >= 1:  erf(x) = 1 - exp(-x^2) * q(x - mid),  q(x) ~ erfc(x) exp(x^2), on [1, top]
Chebyshev least-squares fits in float64 (math.erf as the truth); float32 gets low degrees
rounded to float32, float64 higher degrees. Run: python tools/fit_erf.py
"""
import math

import numpy as np
from numpy.polynomial import chebyshev, polynomial

erf64 = np.frompyfunc(math.erf, 1, 1)
erfc64 = np.frompyfunc(math.erfc, 1, 1)


def fit(f, x, v, degree):
    """Least-squares Chebyshev fit of f(x) in the variable v(x), returned as monomial coefficients in v."""
    lo, hi = v.min(), v.max()
    cheb = chebyshev.chebfit((v - lo) / (hi - lo) * 2 - 1, f, degree)
    mono = polynomial.Polynomial(chebyshev.cheb2poly(cheb))
    return mono(polynomial.Polynomial([-(hi + lo) / (hi - lo), 2 / (hi - lo)])).coef


def coefficients(small_degree, large_degree, top, mid):
    x = np.linspace(1e-6, 1.0, 400_001)
    small = fit(erf64(x).astype(float) / x - 1.0, x, x * x, small_degree)
    x = np.linspace(1.0, top, 400_001)
    large = fit(erfc64(x).astype(float) * np.exp(x * x), x, x - mid, large_degree)
    return small, large


for dtype, degrees, top, mid in [(np.float32, (7, 12), 4.0, 2.5), (np.float64, (12, 30), 6.0, 3.5)]:
    small, large = coefficients(*degrees, top, mid)
    for name, coefs in [("small", small), ("large", large)]:
        print(f"{dtype.__name__} {name} (top={top}, mid={mid}):")
        print("    " + ", ".join(repr(dtype(c).item()) if dtype is np.float64 else str(dtype(c)) for c in coefs))

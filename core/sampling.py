"""The kernels' random numbers, in Python for the twin: splitmix64, and normals by the ziggurat.

Both kernels draw the same numbers from the same seed, so the twin can hold the Cython kernel
to its decisions draw for draw. The Cython kernel loads `ZIGGURAT` from here rather than
building tables of its own, so the two cannot drift apart.

Normals come from Marsaglia & Tsang's ziggurat ("The Ziggurat Method for Generating Random
Variables", J. Stat. Software 5(8), 2000) with 256 layers and 52-bit mantissas, the layout
NumPy's `standard_normal` uses: one 64-bit draw gives the layer (8 bits), the sign (1) and the
abscissa (52), and 99.3 % of draws end at one multiply and one compare. Box-Muller, used
before, paid a log, a square root and a cosine for every normal, and the selection estimate
of a Thompson decision draws thousands of them (`bench.kernel`: most of a decision's time).
"""
from __future__ import annotations

import math
from typing import NamedTuple

LAYERS = 256
ZIGGURAT_R = 3.6541528853610088  # where the base layer's tail starts
# Each layer's area under exp(-x^2 / 2): the base layer's, its rectangle up to r and the tail
# beyond, so that the layers stacked up from r end at the density's peak, 1 (to 1e-15).
ZIGGURAT_AREA = ZIGGURAT_R * math.exp(-0.5 * ZIGGURAT_R * ZIGGURAT_R) \
    + math.sqrt(math.pi / 2.0) * math.erfc(ZIGGURAT_R / math.sqrt(2.0))
_MANTISSA = float(1 << 52)


class Ziggurat(NamedTuple):
    """Per layer i: `k[i]`, the 52-bit abscissa below which a point lies under the density
    whatever its height; `w[i]`, the width of one abscissa step; `f[i]`, the density at the
    layer's right edge (`f[0]` = 1, the top of the topmost layer)."""

    k: list[int]
    w: list[float]
    f: list[float]


def _density(x: float) -> float:
    return math.exp(-0.5 * x * x)


def ziggurat_tables() -> Ziggurat:
    """The layers, from the base (layer 0: the rectangle of width area / f(r) that stands for
    the base strip and its tail) to the top (layer 1, whose left part is never under the
    curve whatever its height, so k[1] = 0)."""
    k, w, f = [0] * LAYERS, [0.0] * LAYERS, [0.0] * LAYERS
    base_width = ZIGGURAT_AREA / _density(ZIGGURAT_R)
    k[0] = int(ZIGGURAT_R / base_width * _MANTISSA)
    w[0], f[0] = base_width / _MANTISSA, 1.0
    edge = ZIGGURAT_R
    w[LAYERS - 1], f[LAYERS - 1] = edge / _MANTISSA, _density(edge)
    for i in range(LAYERS - 2, 0, -1):
        below = edge
        edge = math.sqrt(-2.0 * math.log(ZIGGURAT_AREA / below + _density(below)))
        k[i + 1] = int(edge / below * _MANTISSA)
        w[i], f[i] = edge / _MANTISSA, _density(edge)
    return Ziggurat(k, w, f)


ZIGGURAT = ziggurat_tables()
_K, _W, _F = ZIGGURAT
_INVERSE_R = 1.0 / ZIGGURAT_R


class SplitMix64:
    """The kernels' random generator (splitmix64, Steele et al. 2014), and its uniforms and
    normals as `_kernel` computes them, operation for operation."""

    MASK = (1 << 64) - 1

    def __init__(self, seed: int):
        self.state = seed & self.MASK

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        return z ^ (z >> 31)

    def uniform(self) -> float:
        return (self.next_u64() >> 11) * (1.0 / 9007199254740992.0)

    def normal(self) -> float:
        while True:
            r = self.next_u64()
            layer = r & 0xFF
            negative = (r >> 8) & 1
            bits = (r >> 9) & 0x000FFFFFFFFFFFFF
            x = bits * _W[layer]
            if negative:
                x = -x
            if bits < _K[layer]:
                return x
            if layer == 0:
                return self._tail(negative)
            if (_F[layer - 1] - _F[layer]) * self.uniform() + _F[layer] < _density(x):
                return x

    def _tail(self, negative: int) -> float:
        """Beyond r, by Marsaglia's (1964) exponential rejection; 1 - u keeps log finite."""
        while True:
            xx = -_INVERSE_R * math.log(1.0 - self.uniform())
            yy = -math.log(1.0 - self.uniform())
            if yy + yy > xx * xx:
                return -(ZIGGURAT_R + xx) if negative else ZIGGURAT_R + xx

"""The kernels' normals: the ziggurat draws a standard normal, and both kernels draw the same."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings, strategies as st

from kairos.core import _kernel, reference
from kairos.core.sampling import LAYERS, ZIGGURAT, ZIGGURAT_AREA, ZIGGURAT_R, SplitMix64

SEED = 20261205


def normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * np.vectorize(math.erfc)(-x / math.sqrt(2.0))


def test_the_layers_stack_from_the_tail_up_to_the_peak():
    k, w, f = ZIGGURAT
    top_edge = w[1] * float(1 << 52)
    # the top layer, from its edge's height up to 1, holds the area every layer holds
    assert math.isclose(top_edge * (1.0 - f[1]), ZIGGURAT_AREA, rel_tol=1e-9)
    edges = [w[i] * float(1 << 52) for i in range(1, LAYERS)]
    assert edges == sorted(edges) and math.isclose(edges[-1], ZIGGURAT_R)
    assert k[1] == 0 and all(0 < k[i] < (1 << 52) for i in range(2, LAYERS))
    # each layer's area: its width times its height
    for i in range(2, LAYERS):
        assert math.isclose(edges[i - 1] * (f[i - 1] - f[i]), ZIGGURAT_AREA, rel_tol=1e-9)


def test_the_kernels_normals_are_standard_normal():
    n = 1_000_000
    x = _kernel.normals(SEED, n)
    assert abs(x.mean()) < 5 / math.sqrt(n) and abs(x.std() - 1.0) < 5 / math.sqrt(2 * n)
    s = np.sort(x)
    cdf = normal_cdf(s)
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov at 1 %
    # the tail beyond r is drawn by its own rejection loop: it has its share, both sides
    beyond = math.erfc(ZIGGURAT_R / math.sqrt(2.0))
    share = np.mean(np.abs(x) > ZIGGURAT_R)
    assert abs(share - beyond) < 5 * math.sqrt(beyond / n)
    assert (x > ZIGGURAT_R).any() and (x < -ZIGGURAT_R).any()


def test_the_twin_draws_what_the_kernel_draws_through_every_branch():
    n = 40_000  # enough for the base layer's tail (about 1 draw in 4,000) and the wedges
    twin, fast = reference.normals(SEED, n), _kernel.normals(SEED, n)
    assert np.abs(fast).max() > ZIGGURAT_R
    assert np.array_equal(twin, fast)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, (1 << 64) - 1))
def test_any_seed_draws_the_same_normals_in_both_kernels(seed):
    assert np.array_equal(reference.normals(seed, 300), _kernel.normals(seed, 300))


def test_a_draw_that_misses_the_layers_costs_more_numbers_than_one():
    # the wedges and the tail take extra uniforms: the stream's position after a run of
    # normals is not one step per normal, and both kernels agree on it by drawing the same
    rng = SplitMix64(SEED)
    for _ in range(10_000):
        rng.normal()
    steps = 0
    probe = SplitMix64(SEED)
    while probe.state != rng.state:
        probe.next_u64()
        steps += 1
    assert 10_000 < steps < 10_300
    assert np.array_equal(_kernel.normals(SEED, 10_001)[-1:], [rng.normal()])

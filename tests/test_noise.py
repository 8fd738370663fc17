"""Seeded noise: same numbers everywhere — checked against an independent numpy implementation."""

import numpy as np
import pytest

from runtime.noise import gaussian


def reference(seed, n):
    """SplitMix64 + Box–Muller, vectorised in numpy (uint64 arithmetic wraps like the spec's masks)."""
    k = (n + 1) // 2 * 2
    with np.errstate(over="ignore"):
        idx = np.arange(1, k + 1, dtype=np.uint64)
        z = np.uint64(seed) + idx * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    a, b = z[0::2], z[1::2]
    u1 = ((a >> np.uint64(11)).astype(np.float64) + 1) / 2.0**53
    u2 = (b >> np.uint64(11)).astype(np.float64) / 2.0**53
    r = np.sqrt(-2 * np.log(u1))
    out = np.empty(k)
    out[0::2], out[1::2] = r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)
    return out[:n].astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 42, 2**32 - 1, 2**63 + 5])
def test_matches_independent_implementation(seed):
    ours = np.frombuffer(gaussian(seed, 4097).tobytes(), np.float32)
    assert np.array_equal(ours, reference(seed, 4097))


def test_statistics_and_determinism():
    x = np.frombuffer(gaussian(7, 100_000).tobytes(), np.float32)
    assert abs(x.mean()) < 0.01 and abs(x.std() - 1) < 0.01
    assert gaussian(7, 10) == gaussian(7, 10) and gaussian(7, 10) != gaussian(8, 10)
    assert list(gaussian(7, 5)) == list(gaussian(7, 6)[:5])  # a prefix does not depend on the length


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, True, "3"])
def test_bad_seed(bad):
    with pytest.raises(ValueError, match="seed must be an integer"):
        gaussian(bad, 4)

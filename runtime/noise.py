"""Seeded Gaussian noise that is the same on every platform.

Why not torch/numpy generators: the page has neither, and the point of a seed in an explainer is
that the browser and the command line start from the very same latent. The recipe is fixed and
written down so anyone can reproduce it:

- a SplitMix64 stream seeded with the integer seed (0 ≤ seed < 2**64);
- each output pair takes two 64-bit draws, u1 = (a >> 11 + 1) / 2**53 in (0, 1] and
  u2 = (b >> 11) / 2**53 in [0, 1);
- Box–Muller: r = sqrt(-2 ln u1); z0 = r cos(2π u2), z1 = r sin(2π u2), in that order;
- each value is rounded to float32.
All steps are exact integer or IEEE-754 double operations; only ln/cos/sin come from the platform's
libm, whose results differ by at most one double ulp between libms, which rounding to float32
removes except with a probability of about 1e-8 per value.
"""

from __future__ import annotations

import math
from array import array

_MASK = (1 << 64) - 1


def _splitmix64(state: int):
    while True:
        state = (state + 0x9E3779B97F4A7C15) & _MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        yield z ^ (z >> 31)


def gaussian(seed: int, count: int) -> array:
    """`count` standard-normal float32 values for `seed`."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= _MASK:
        raise ValueError(f"seed must be an integer from 0 to {_MASK}, got {seed!r}")
    draws = _splitmix64(seed)
    out = array("f", bytes(4 * count))
    two_pi = 2.0 * math.pi
    for i in range(0, count, 2):
        u1 = ((next(draws) >> 11) + 1) * (1.0 / 9007199254740992.0)
        u2 = (next(draws) >> 11) * (1.0 / 9007199254740992.0)
        r = math.sqrt(-2.0 * math.log(u1))
        out[i] = r * math.cos(two_pi * u2)
        if i + 1 < count:
            out[i + 1] = r * math.sin(two_pi * u2)
    return out

"""A synthetic trace file at Stable Diffusion 1.5's sizes, for testing the page and the format at
full size without a model: 512×512 images, 4×64×64 latents, 77×768 text states, attention 77×64×64.

Its tensors are random numbers (seeded), its plan (tokens, timesteps, coefficients) is a real run's,
taken from a small trace made by the CLI. The file says so everywhere: source "synthetic",
synthetic: true, and a machine line naming this helper; the page shows it as a synthetic trace,
never as a model's output.
"""

from __future__ import annotations

import math
import random
import statistics
from array import array
from pathlib import Path

from runtime import tracefile
from runtime.backend import HostTensor

SD15 = {"image": 512, "latent": 64, "channels": 4, "text": 768, "tokens": 77}


_NORMAL: list | None = None


def _noise(n: int, rng: random.Random, scale: float = 1.0, offset: float = 0.0) -> array:
    """n Gaussian values, independent (so they compress as little as a real run's would): 16 random
    bits each, through a table of the normal distribution's quantiles."""
    global _NORMAL
    if _NORMAL is None:
        nd = statistics.NormalDist()
        _NORMAL = [nd.inv_cdf((i + 0.5) / 65536) for i in range(65536)]
    bits = array("H", rng.randbytes(2 * n))
    table = [v * scale + offset for v in _NORMAL]
    return array("f", [table[b] for b in bits])


def _image(side: int, rng: random.Random, t: float) -> HostTensor:
    """A smooth colour field with noise that fades as t goes 1 → 0 (it looks like denoising, and is not a model's)."""
    px = bytearray(side * side * 4)
    a, b = rng.random() * 6.28, rng.random() * 6.28
    for y in range(side):
        for x in range(side):
            i = (y * side + x) * 4
            n = (rng.random() - 0.5) * 255 * t
            px[i] = max(0, min(255, int(128 + 90 * math.sin(x / 40 + a) + n)))
            px[i + 1] = max(0, min(255, int(128 + 90 * math.sin(y / 50 + b) + n)))
            px[i + 2] = max(0, min(255, int(128 + 90 * math.sin((x + y) / 70) + n)))
            px[i + 3] = 255
    return HostTensor(array("B", px), (side, side, 4), "uint8")


def write_sd15_sized(template: Path, out: Path, seed: int = 0) -> dict:
    """Write an SD 1.5-sized synthetic trace to `out` from a small real trace file; returns the sizes."""
    rng = random.Random(seed)
    src = tracefile.load(template)
    trace = src.trace
    h = w = SD15["latent"]
    lat = (1, SD15["channels"], h, w)
    n_lat = math.prod(lat)
    steps = len(trace.steps)
    for k, s in enumerate(trace.steps):
        t = 1 - k / max(1, steps - 1)
        s.latent = HostTensor(_noise(n_lat, rng, 1 + 13 * t), lat)
        s.noise_uncond = HostTensor(_noise(n_lat, rng), lat)
        s.noise_cond = HostTensor(_noise(n_lat, rng), lat)
        s.noise_guided = HostTensor(_noise(n_lat, rng), lat)
        s.pred_x0 = HostTensor(_noise(n_lat, rng, 0.8), lat)
        # attention: per token a map of probabilities summing (over tokens) to about one
        att = _noise(SD15["tokens"] * h * w, rng, 0.004, 1 / SD15["tokens"])
        s.attention = HostTensor(array("f", (abs(v) for v in att)), (SD15["tokens"], h, w))
        # previews: the writer averages them down to 128 px, as it does a real 512 px run's
        s.image = _image(SD15["image"], rng, t) if k % 5 == 4 or k == steps - 1 else _image(128, rng, t)
    trace.embeddings = HostTensor(_noise(2 * SD15["tokens"] * SD15["text"], rng), (2, SD15["tokens"], SD15["text"]))
    trace.final_latent = HostTensor(_noise(n_lat, rng, 0.8), lat)
    trace.image = _image(SD15["image"], rng, 0.0)
    bundle = dict(src.bundle)
    bundle.update(
        name="synthetic-sd15-size",
        imageSize=[512, 512],
        latentSize=[h, w],
        bytes=0,
        randomWeights=False,
        description="Random tensors at Stable Diffusion 1.5's sizes (tests/synthetic_trace.py); no model ran.",
    )
    bundle["model"] = dict(
        bundle["model"],
        architecture="synthetic (SD 1.5 sizes)",
        image_size=[512, 512],
        latent_size=[h, w],
        latent_channels=4,
        vae_scale_factor=8,
        text_hidden_size=SD15["text"],
    )
    return tracefile.write(
        trace,
        out,
        bundle=bundle,
        request_info=src.request_info,
        source="synthetic",
        producer="tests/synthetic_trace.py (random tensors, no model)",
        machine_line="no machine: synthetic random tensors (tests/synthetic_trace.py)",
        synthetic=True,
    )


if __name__ == "__main__":
    import sys

    print(write_sd15_sized(Path(sys.argv[1]), Path(sys.argv[2])))

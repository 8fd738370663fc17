"""Time the reference: diffusers' StableDiffusionPipeline (PyTorch, CPU) on the checkpoint folder.

Why: it is the yardstick every Stable Diffusion user knows; timing it on the same prompt, steps and
guidance shows what exporting to ONNX and running our own loop costs or saves. Components are timed
by forward hooks on the text encoder and UNet and by wrapping vae.decode, so the pipeline itself runs
unmodified. Meant to run in its own process (bench.main does this) so its peak RSS is its own.
"""

from __future__ import annotations

import statistics
import time

from .native import DEFAULT_PROMPT, rss_mb, summarize


def bench_reference(
    checkpoint,
    *,
    threads: int,
    steps: int = 10,
    repeats: int = 3,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    guidance: float = 7.5,
    image_size: list | None = None,
    warmup: int = 1,
) -> dict:
    """Medians over `repeats` calls of the pipeline (after `warmup` untimed ones), per component and end to end.

    Components match bench.native's: text_encoder (all text-encoder calls of one run: diffusers encodes
    the prompt and the negative prompt as two batch-1 calls), unet_step (one batch-2 forward), ops
    (everything outside the three models: scheduler, guidance arithmetic, post-processing), vae_decode.
    """
    import diffusers
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process
    rss_start = rss_mb()
    t0 = time.perf_counter()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    startup_ms = (time.perf_counter() - t0) * 1000
    rss_loaded = rss_mb()

    calls: dict[str, list[float]] = {"text_encoder": [], "unet": [], "vae_decode": []}
    _time_module(pipe.text_encoder, calls["text_encoder"])
    _time_module(pipe.unet, calls["unet"])
    decode = pipe.vae.decode

    def timed_decode(*a, **k):
        t = time.perf_counter()
        out = decode(*a, **k)
        calls["vae_decode"].append((time.perf_counter() - t) * 1000)
        return out

    pipe.vae.decode = timed_decode
    size = {}
    if image_size:
        size = {"height": int(image_size[0]), "width": int(image_size[1])}

    def generate():
        for v in calls.values():
            v.clear()
        g = torch.Generator().manual_seed(seed)
        t = time.perf_counter()
        pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="np", **size)
        total = (time.perf_counter() - t) * 1000
        return {
            "text_encoder": sum(calls["text_encoder"]),
            "unet_total": sum(calls["unet"]),
            "vae_decode": sum(calls["vae_decode"]),
            "end_to_end": total,
            "unet_calls": list(calls["unet"]),
        }

    for _ in range(warmup):
        generate()
    runs, unet_steps = [], []
    for _ in range(repeats):
        r = generate()
        unet_steps += r.pop("unet_calls")
        r["ops"] = r["end_to_end"] - r["text_encoder"] - r["unet_total"] - r["vae_decode"]
        runs.append(r)

    latent = [d // pipe.vae_scale_factor for d in image_size] if image_size else None
    raw = _raw_unet(pipe, calls=max(5, repeats * steps), latent_size=latent)
    return {
        "runtime": "torch",
        "label": "diffusers PyTorch",
        "backend": f"torch {torch.__version__} CPU, {threads} threads",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "threads": threads,
        "steps": steps,
        "repeats": repeats,
        "startup_ms": startup_ms,
        **summarize(runs, unet_steps, [r["ops"] / steps for r in runs], repeats, raw, rss_start, rss_loaded),
    }


def _time_module(module, sink: list) -> None:
    """Record each forward's wall time (ms) into sink, with a pre-hook/hook pair."""
    starts = []
    module.register_forward_pre_hook(lambda m, args: starts.append(time.perf_counter()))
    module.register_forward_hook(lambda m, args, out: sink.append((time.perf_counter() - starts.pop()) * 1000))


def _raw_unet(pipe, calls: int, latent_size=None) -> float:
    """Median ms of one bare UNet forward at batch 2 (CFG) under no_grad, after one warm-up call."""
    import torch

    cfg = pipe.unet.config
    g = torch.Generator().manual_seed(0)
    if latent_size is None:
        s = cfg.sample_size
        latent_size = (s, s) if isinstance(s, int) else tuple(s)
    sample = torch.randn(2, cfg.in_channels, *latent_size, generator=g)
    states = torch.randn(2, pipe.tokenizer.model_max_length, cfg.cross_attention_dim, generator=g)
    t = torch.tensor(500.0)
    times = []
    with torch.no_grad():
        pipe.unet(sample, t, states)
        for _ in range(calls):
            t0 = time.perf_counter()
            pipe.unet(sample, t, states)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)

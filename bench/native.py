"""Time our own runtime natively: runtime.pipeline.Pipeline on runtime.native.NativeBackend (onnxruntime).

Why both the loop and a bare session.run: the loop's per-component timings (from the Trace) say
what a user of the CLI waits for, the bare UNet call says what onnxruntime itself costs, and the
difference is the controller's overhead (op graphs, host copies for the Trace).
Meant to run in its own process (bench.main does this) so its peak RSS is its own.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

DEFAULT_PROMPT = "a cat on a blue background"


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB: VmHWM of /proc/self/status.

    Not ru_maxrss: Linux carries the parent's high-water mark across fork+exec into the child's
    ru_maxrss, so a child started by a big parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def summarize(runs: list[dict], unet_steps: list, op_steps: list, repeats: int, raw, rss_start, rss_loaded) -> dict:
    """The fields every runtime's result shares: medians per component, the samples, memory."""
    return {
        "components_ms": {
            "text_encoder": median(r["text_encoder"] for r in runs),
            "unet_step": median(unet_steps),
            "ops": median(r["ops"] for r in runs),
            "ops_per_step": median(op_steps),
            "vae_decode": median(r["vae_decode"] for r in runs),
        },
        "unet_calls_per_run": len(unet_steps) // max(1, repeats),
        "end_to_end_ms": median(r["end_to_end"] for r in runs),
        "unet_raw_ms": raw,
        "samples_ms": {"runs": runs, "unet_steps": unet_steps},
        "memory": {"rss_start_mb": rss_start, "rss_loaded_mb": rss_loaded, "peak_rss_mb": peak_rss_mb()},
    }


def median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def bench_native(
    bundle_dir,
    *,
    threads: int,
    steps: int = 10,
    repeats: int = 3,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    guidance: float = 7.5,
    warmup: int = 1,
) -> dict:
    """Medians over `repeats` full generations (after `warmup` untimed ones), per component and end to end.

    Components: text_encoder (one batch-2 call), unet_step (one batch-2 call, median over every step of
    every repeat), ops (all op graphs of one run: CFG input, guidance, scheduler lincombs, to_rgba),
    vae_decode (one call), end_to_end (Pipeline.generate, wall clock). Previews are off (preview_every=0)
    so every runtime does the same work: 1 text encoding, `steps` UNet calls, 1 decode.
    """
    import onnxruntime as ort

    from runtime.bundle import Bundle
    from runtime.native import NativeBackend
    from runtime.pipeline import Pipeline, Request, run_sync

    rss_start = rss_mb()
    t0 = time.perf_counter()
    bundle = Bundle.from_dir(bundle_dir, verify=False)
    backend = NativeBackend(bundle_dir, threads=threads)
    pipe = Pipeline(bundle, backend)
    load_ms = run_sync(pipe.load())
    startup_ms = (time.perf_counter() - t0) * 1000
    rss_loaded = rss_mb()

    req = dict(prompt=prompt, seed=seed, guidance=guidance, steps=steps, preview_every=0)
    for _ in range(warmup):
        run_sync(pipe.generate(Request(**req)))
    runs = []
    unet_steps, op_steps = [], []
    for _ in range(repeats):
        trace = run_sync(pipe.generate(Request(**req)))
        t = trace.timings_ms
        runs.append(
            {
                "text_encoder": t.get("text_encoder"),
                "unet_total": t.get("unet"),
                "ops": t.get("ops"),
                "vae_decode": t.get("vae_decoder"),
                "end_to_end": t.get("total"),
            }
        )
        unet_steps += [s.timings_ms["unet"] for s in trace.steps]
        op_steps += [s.timings_ms.get("ops", 0.0) for s in trace.steps]

    raw = _raw_unet(backend.sessions["unet"], bundle, calls=max(5, repeats * steps))
    return {
        "runtime": "native",
        "label": "onnxruntime native (our loop)",
        "backend": backend.name,
        "versions": {"onnxruntime": ort.__version__},
        "threads": threads,
        "steps": steps,
        "repeats": repeats,
        "startup_ms": startup_ms,
        "load_ms": load_ms,
        **summarize(runs, unet_steps, op_steps, repeats, raw, rss_start, rss_loaded),
    }


def unet_feeds(session, model: dict, name: str = "the bundle") -> dict:
    """The UNet's inputs for one timing call: batch 2 (guidance), the latent size, random values, timestep 500."""
    import numpy as np

    h, w = model["latent_size"]
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in session.get_inputs():
        if inp.name == "sample":
            feeds[inp.name] = rng.standard_normal((2, model["latent_channels"], h, w), dtype=np.float32)
        elif inp.name == "encoder_hidden_states":
            shape = (2, model.get("text_max_length", 77), model["text_hidden_size"])
            feeds[inp.name] = rng.standard_normal(shape, dtype=np.float32)
        elif inp.name == "timestep":
            dtype = np.int64 if "int64" in inp.type else np.float32
            feeds[inp.name] = np.full([1] * len(inp.shape), 500, dtype=dtype)
        else:
            raise ValueError(f"{name}: the UNet has an unexpected input {inp.name!r}")
    return feeds


def _raw_unet(session, bundle, calls: int) -> float:
    """Median ms of onnxruntime session.run on the UNet alone at batch 2 (CFG), after one warm-up call."""
    feeds = unet_feeds(session, bundle.model, Path(bundle.location).name)
    return statistics.median(call_times(session, feeds, calls))


def call_times(session, feeds: dict, calls: int, warmup: int = 1) -> list[float]:
    """ms of each of `calls` session.run calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t) * 1000)
    return times

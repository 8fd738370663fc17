"""The denoising loop: prompt → tokens → text states → UNet steps with guidance → image, traced.

Why a Trace: the page's views only render what the controller recorded here, so every number a
reader sees is a number the model really produced in this run.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .backend import Backend, HostTensor, Ops
from .bundle import MODEL_COMPONENTS, OP_GRAPHS, Bundle
from .noise import gaussian
from .schedulers import SCHEDULERS, make_scheduler
from .tokenizer import CLIPTokenizer, Tokenized

MAX_PROMPT_CHARS = 5000
MAX_SEED = 2**32 - 1


def run_sync(coro):
    """Run a coroutine to completion from synchronous CPython code (CLI, exporter, tests).

    Uses a fresh thread when this thread already runs an event loop (e.g. under Playwright's sync API).
    Not for Pyodide, where the page's event loop drives generate() directly.
    """
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class Cancelled(Exception):
    """Raised inside the loop when the caller asked to stop; the partial trace stays valid."""


@dataclass
class Request:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    guidance: float = 7.5
    steps: int = 25
    scheduler: str = ""  # empty: the bundle's default
    preview_every: int = 1  # decode the predicted image every N steps (0: never)

    def validate(self, default_scheduler: str) -> "Request":
        """Check every field; the ValueError message names the field and the allowed range."""
        for name in ("prompt", "negative_prompt"):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise ValueError(f"{name} must be text")
            if len(v) > MAX_PROMPT_CHARS:
                raise ValueError(f"{name} is {len(v)} characters; at most {MAX_PROMPT_CHARS} are accepted (CLIP reads only 75 tokens anyway)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 100:
            raise ValueError("steps must be a whole number from 1 to 100")
        try:
            g = float(self.guidance)
        except (TypeError, ValueError):
            raise ValueError("guidance scale must be a number from 0 to 20") from None
        if not math.isfinite(g) or not 0 <= g <= 20:
            raise ValueError("guidance scale must be a number from 0 to 20")
        self.guidance = g
        self.scheduler = self.scheduler or default_scheduler
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if isinstance(self.preview_every, bool) or not isinstance(self.preview_every, int) or self.preview_every < 0:
            raise ValueError("preview_every must be a whole number ≥ 0")
        return self


@dataclass
class StepTrace:
    index: int
    timestep: float
    coefficients: dict
    latent: HostTensor  # x_t, the input of this step
    noise_uncond: HostTensor
    noise_cond: HostTensor
    noise_guided: HostTensor
    pred_x0: HostTensor | None
    image: HostTensor | None  # decoded predicted x0 (uint8 H×W×4), when previewed
    timings_ms: dict


@dataclass
class Trace:
    request: Request
    tokens: Tokenized
    negative_tokens: Tokenized
    embeddings: HostTensor | None = None  # [2, 77, d]: unconditional (negative prompt) then conditional
    timesteps: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    final_latent: HostTensor | None = None
    image: HostTensor | None = None
    timings_ms: dict = field(default_factory=dict)
    backend: str = ""
    cancelled: bool = False


class Pipeline:
    """Owns a bundle and a backend; `await load()` once, then `await generate(request)` many times."""

    def __init__(self, bundle: Bundle, backend: Backend):
        self.bundle = bundle
        self.backend = backend
        tok = bundle.manifest["tokenizer"]
        self.tokenizer = CLIPTokenizer.from_texts(
            bundle.read_text(tok["files"]["vocab"]), bundle.read_text(tok["files"]["merges"]),
            max_length=tok["max_length"], pad_token=tok.get("pad_token", "<|endoftext|>"),
        )
        self.ops: Ops | None = None

    async def load(self, progress: Callable[[str, int, int], None] | None = None) -> dict:
        """Create every session; returns per-component load times in ms."""
        names = MODEL_COMPONENTS + OP_GRAPHS
        times = {}
        for i, name in enumerate(names):
            if progress:
                progress(name, i, len(names))
            t = time.perf_counter()
            await self.backend.load(name, self.bundle.component(name)["files"])
            times[name] = (time.perf_counter() - t) * 1000
        zero = self.backend.from_host(HostTensor.of([0.0], (1, 1, 1, 1)))
        self.ops = Ops(self.backend, self.bundle.manifest["components"]["lincomb"].get("terms", 8), zero)
        if progress:
            progress("ready", len(names), len(names))
        return times

    def latent_shape(self) -> tuple:
        m = self.bundle.model
        return (1, m["latent_channels"], m["latent_size"][0], m["latent_size"][1])

    def initial_noise(self, seed: int) -> HostTensor:
        shape = self.latent_shape()
        return HostTensor(gaussian(seed, shape[0] * shape[1] * shape[2] * shape[3]), shape)

    async def _run(self, name, feeds, timings, key=None):
        t = time.perf_counter()
        out = await self.backend.run(name, feeds)
        k = key or name
        timings[k] = timings.get(k, 0.0) + (time.perf_counter() - t) * 1000
        return out

    async def decode(self, latent, timings) -> Any:
        """latent (handle) → uint8 RGBA handle, via 1/scaling_factor, the VAE decoder and to_rgba."""
        ops = self.ops
        scaled = await self._timed_value(ops.lincomb([(1.0 / self.bundle.model["vae_scaling_factor"], latent)]), timings)
        image = (await self._run("vae_decoder", {"latent_sample": scaled}, timings))["sample"]
        return (await self._run("to_rgba", {"image": image}, timings, "ops"))["rgba"]

    async def _timed_value(self, expr, timings):
        t = time.perf_counter()
        v = await self.ops.value(expr)
        timings["ops"] = timings.get("ops", 0.0) + (time.perf_counter() - t) * 1000
        return v

    async def generate(self, request: Request, on_step: Callable[[StepTrace], Any] | None = None,
                       should_stop: Callable[[], bool] | None = None, initial_latents: HostTensor | None = None) -> Trace:
        if self.ops is None:
            raise RuntimeError("call `await pipeline.load()` before generate()")
        req = request.validate(self.bundle.manifest["scheduler"]["default"])
        be, ops, m = self.backend, self.ops, self.bundle.model
        t_start = time.perf_counter()
        trace = Trace(req, self.tokenizer.encode(req.prompt), self.tokenizer.encode(req.negative_prompt), backend=be.name)
        run_t: dict = {}

        ids_dtype = self.bundle.input_dtype("text_encoder", "input_ids")
        ids = be.from_host(HostTensor.of(trace.negative_tokens.ids + trace.tokens.ids, (2, len(trace.tokens.ids)), ids_dtype))
        states = (await self._run("text_encoder", {"input_ids": ids}, run_t))["last_hidden_state"]
        trace.embeddings = await be.to_host(states)

        sched = make_scheduler(req.scheduler, self.bundle.manifest["scheduler"]["config"], m.get("prediction_type"))
        sched.set_timesteps(req.steps)
        trace.timesteps = list(sched.timesteps)
        noise = initial_latents if initial_latents is not None else self.initial_noise(req.seed)
        latent = await ops.value(ops.lincomb([(sched.init_noise_sigma, be.from_host(noise))]))
        t_dtype = self.bundle.input_dtype("unet", "timestep")
        g = be.from_host(HostTensor.of([req.guidance], (1,)))

        try:
            for i, t in enumerate(sched.timesteps):
                if should_stop and should_stop():
                    raise Cancelled()
                st: dict = {}
                t0 = time.perf_counter()
                scale = be.from_host(HostTensor.of([sched.scale_model_input_factor(i)], (1,)))
                sample = (await self._run("cfg_input", {"latent": latent, "scale": scale}, st, "ops"))["sample"]
                timestep = be.from_host(HostTensor.of([t], (), t_dtype))
                pred = (await self._run("unet", {"sample": sample, "timestep": timestep, "encoder_hidden_states": states}, st))["out_sample"]
                gd = await self._run("guidance", {"noise_pred": pred, "scale": g}, st, "ops")
                res = sched.step(gd["guided"], i, latent, ops)
                new_latent = await self._timed_value(res.prev_sample, st)
                x0 = await self._timed_value(res.pred_original_sample, st) if res.pred_original_sample is not None else None
                image = None
                if x0 is not None and req.preview_every and (i % req.preview_every == 0 or i == len(sched.timesteps) - 1):
                    image = await be.to_host(await self.decode(x0, st))
                step = StepTrace(
                    i, float(t), dict(res.coefficients), await be.to_host(latent), await be.to_host(gd["uncond"]),
                    await be.to_host(gd["cond"]), await be.to_host(gd["guided"]), await be.to_host(x0) if x0 is not None else None,
                    image, st,
                )
                st["total"] = (time.perf_counter() - t0) * 1000
                trace.steps.append(step)
                for k, v in st.items():
                    run_t[k] = run_t.get(k, 0.0) + v
                latent = new_latent
                if on_step:
                    r = on_step(step)
                    if hasattr(r, "__await__"):
                        await r
        except Cancelled:
            trace.cancelled = True
        trace.final_latent = await be.to_host(latent)
        if not trace.cancelled:
            trace.image = await be.to_host(await self.decode(latent, run_t))
        run_t["total"] = (time.perf_counter() - t_start) * 1000
        trace.timings_ms = run_t
        return trace

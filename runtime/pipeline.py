"""The denoising loop: prompt → tokens → text states → UNet steps with guidance → image, traced.

Why a Trace: the page's views only render what the controller recorded here, so every number a
reader sees is a number the model really produced in this run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .backend import Backend, Expr, HostTensor, Ops
from .bundle import ATTENTION_OUTPUT, MODEL_COMPONENTS, OP_GRAPHS, OPTIONAL_GRAPHS, Bundle, BundleError
from .noise import gaussian
from .schedulers import make_scheduler
from .tokenizer import CLIPTokenizer
from .trace import MAX_PROMPT_CHARS, MAX_SEED, ClipScores, Plan, Request, StepTrace, Trace  # noqa: F401 - the runtime's API


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


class Pipeline:
    """Owns a bundle and a backend; `await load()` once, then `await generate(request)` many times."""

    def __init__(self, bundle: Bundle, backend: Backend):
        self.bundle = bundle
        self.backend = backend
        tok = bundle.manifest["tokenizer"]
        self.tokenizer = CLIPTokenizer.from_texts(
            bundle.read_text(tok["files"]["vocab"]),
            bundle.read_text(tok["files"]["merges"]),
            vocab_name=tok["files"]["vocab"],
            max_length=tok["max_length"],
            pad_token=tok.get("pad_token", "<|endoftext|>"),
        )
        self.ops: Ops | None = None

    async def load(self, progress: Callable[[str, int, int], None] | None = None) -> dict:
        """Create every session; returns per-component load times in ms."""
        names = MODEL_COMPONENTS + OP_GRAPHS + tuple(n for n in OPTIONAL_GRAPHS if n in self.bundle.manifest["components"])
        times = {}
        for i, name in enumerate(names):
            if progress:
                progress(name, i, len(names))
            t = time.perf_counter()
            await self.backend.load(name, self.bundle.component(name)["files"])
            times[name] = (time.perf_counter() - t) * 1000
            self._check_io(name)
        zero = self.backend.from_host(HostTensor.of([0.0], (1, 1, 1, 1)))
        self.ops = Ops(self.backend, self.bundle.manifest["components"]["lincomb"]["terms"], zero)
        if progress:
            progress("ready", len(names), len(names))
        return times

    def has_clip(self) -> bool:
        from .clip import has_clip

        return has_clip(self.bundle)

    async def clip(self, images, prompts: list[str]) -> list[list[float]]:
        """Cosine similarity of each image (RGBA handle or HostTensor) with each prompt, by the bundle's CLIP."""
        from .clip import clip_similarities

        return await clip_similarities(self, images, prompts)

    async def clip_scores(self, trace: Trace, prompts: list[str]) -> ClipScores:
        """CLIP's similarity of the run's final image and of every decoded step image to each prompt."""
        images = ([trace.image] if trace.image is not None else []) + [s.image for s in trace.steps if s.image is not None]
        sims = await self.clip(images, prompts) if images else []
        final = sims[0] if trace.image is not None else None
        rest = sims[1:] if trace.image is not None else sims
        indices = [s.index for s in trace.steps if s.image is not None]
        scale = float(self.bundle.component("clip_image").get("logit_scale", 1.0))
        trace.clip = ClipScores(
            prompts=list(prompts), final=final, steps=[[i, row] for i, row in zip(indices, rest)], logit_scale=scale
        )
        return trace.clip

    def has(self, name: str) -> bool:
        """Whether this bundle carries the optional graph `name` (and it is loaded)."""
        return name in self.bundle.manifest["components"] and (self.ops is not None)

    def _check_io(self, name: str) -> None:
        """The session's input and output names must be the ones the manifest promises (a VAE file in
        the UNet's place, hash updated, would otherwise fail mid-run with a runtime's raw error)."""
        io = getattr(self.backend, "io_names", None)
        if io is None:
            return
        got_in, got_out = io(name)
        comp = self.bundle.component(name)
        want_in, want_out = [s["name"] for s in comp.get("inputs", [])], [s["name"] for s in comp.get("outputs", [])]
        if (want_in and sorted(got_in) != sorted(want_in)) or (want_out and sorted(got_out) != sorted(want_out)):
            raise BundleError(
                f"bundle component {name} does not match its manifest: the model takes ({', '.join(got_in)}) and gives "
                f"({', '.join(got_out)}), the manifest promises ({', '.join(want_in)}) → ({', '.join(want_out)}); "
                "re-export the bundle"
            )

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

    def _scheduler(self, req: Request):
        sched = make_scheduler(
            req.scheduler, self.bundle.manifest["scheduler"]["config"], self.bundle.model.get("prediction_type")
        )
        sched.set_timesteps(req.steps)
        return sched

    def plan(self, request: Request) -> Plan:
        """Validate the request and work out what the run will do: tokens, timesteps, noise schedule.

        Computed once per run: the page announces it (run-start) and generate() runs it."""
        req = request.validate(self.bundle.manifest["scheduler"]["default"])
        sched = self._scheduler(req)
        tokens, negative = self.tokenizer.encode(req.prompt), self.tokenizer.encode(req.negative_prompt)
        return Plan(
            request=req,
            tokens=tokens,
            negative_tokens=negative,
            token_known=self._known(tokens),
            negative_token_known=self._known(negative),
            timesteps=[float(t) for t in sched.timesteps],
            scheduler_label=sched.label,
            scheduler_config={k: v for k, v in sched.config.items() if isinstance(v, (int, float, str, bool)) or v is None},
            alphas_cumprod=list(sched.alphas_cumprod),
            sigmas=list(sched.sigmas) if sched.sigmas is not None else None,
            init_noise_sigma=float(sched.init_noise_sigma),
            _scheduler=sched,
        )

    def _known(self, tok) -> list | None:
        """Per token: is its word one the model card says the model saw in training (None: no list).
        Special tokens count as known; a word split into several tokens is judged as a whole."""
        words = ((self.bundle.manifest.get("about") or {}).get("vocabulary") or {}).get("words")
        if not words:
            return None
        known, out, pending = set(words), [], []
        for k, t in enumerate(tok.tokens):
            if k == 0 or (k == len(tok.tokens) - 1 and t == "<|endoftext|>"):
                out.append(True)
                continue
            pending.append(t)
            if t.endswith("</w>") or k == len(tok.tokens) - 2:
                word = "".join(pending).removesuffix("</w>").lower()
                ok = word in known or not any(c.isalpha() for c in word)  # punctuation is not a word
                out += [ok] * len(pending)
                pending = []
        out += [True] * (len(tok.tokens) - len(out))
        return out

    async def generate(
        self,
        request: Request | Plan,
        on_step: Callable[[StepTrace], Any] | None = None,
        should_stop: Callable[[], bool] | None = None,
        initial_latents: HostTensor | None = None,
        preview_budget: float | None = None,
    ) -> Trace:
        """Run the plan. preview_budget (the page): of the previewed steps (preview_every), decode a step's
        predicted image during the loop only while decoding has cost at most this share of the loop's
        time so far; the rest are decoded after the loop by decode_previews(), off its critical path."""
        if self.ops is None:
            raise RuntimeError("call `await pipeline.load()` before generate()")
        t_start = time.perf_counter()
        # 1. Plan the run (validated request, tokens, timesteps), unless the caller already did
        plan = request if isinstance(request, Plan) else self.plan(request)
        trace = Trace(plan, backend=self.backend.name)
        run_timings: dict = {}

        # 2. Encode the negative prompt and the prompt in one batch: [unconditional, conditional]
        text_states = await self._encode_prompt(trace, run_timings)

        # 3. Prepare the scheduler and the initial latent x_T
        scheduler = self._take_scheduler(plan)
        latent = await self._prepare_latent(scheduler, plan.request.seed, initial_latents)

        # 4. Denoising loop: one traced step per timestep, until done or stopped
        loop = _LoopState(
            guidance=self.backend.from_host(HostTensor.of([plan.request.guidance], (1,))),
            timestep_dtype=self.bundle.input_dtype("unet", "timestep"),
            num_steps=len(scheduler.timesteps),
            preview_every=plan.request.preview_every,
            preview_budget=preview_budget,
        )
        try:
            for i, t in enumerate(scheduler.timesteps):
                if should_stop and should_stop():
                    raise Cancelled()
                step, latent = await self._denoise_step(i, t, scheduler, latent, text_states, loop)
                trace.steps.append(step)
                _accumulate(run_timings, step.timings_ms)
                if on_step:
                    await _maybe_await(on_step(step))
        except Cancelled:
            trace.cancelled = True

        # 5. Decode the final latent into the image (not for a stopped run)
        trace.final_latent = await self.backend.to_host(latent)
        if not trace.cancelled:
            trace.image = await self.backend.to_host(await self.decode(latent, run_timings))
        run_timings["total"] = (time.perf_counter() - t_start) * 1000
        trace.timings_ms = run_timings
        return trace

    async def _encode_prompt(self, trace: Trace, timings: dict) -> Any:
        """Step 2: CLIP's last hidden states for [negative prompt, prompt], (2, max_length, d); the trace keeps them."""
        ids_dtype = self.bundle.input_dtype("text_encoder", "input_ids")
        batch = HostTensor.of(trace.negative_tokens.ids + trace.tokens.ids, (2, len(trace.tokens.ids)), ids_dtype)
        text_states = (await self._run("text_encoder", {"input_ids": self.backend.from_host(batch)}, timings))[
            "last_hidden_state"
        ]
        trace.embeddings = await self.backend.to_host(text_states)
        return text_states

    def _take_scheduler(self, plan: Plan):
        """Step 3: the plan's scheduler, once: multistep samplers keep history, so a plan run again gets a fresh one."""
        scheduler, plan._scheduler = plan._scheduler or self._scheduler(plan.request), None
        return scheduler

    async def _prepare_latent(self, scheduler, seed: int, initial_latents: HostTensor | None) -> Any:
        """Step 3: x_T = init_noise_sigma · noise, the seed's noise unless the caller gives its own (compare mode)."""
        noise = initial_latents if initial_latents is not None else self.initial_noise(seed)
        return await self.ops.value(self.ops.lincomb([(scheduler.init_noise_sigma, self.backend.from_host(noise))]))

    async def _denoise_step(self, i: int, t: float, scheduler, latent, text_states, loop: _LoopState) -> tuple[StepTrace, Any]:
        """Step 4, once: guided noise → scheduler update → what the views show; returns the step and x_{t−1}."""
        be, timings = self.backend, {}
        t0 = time.perf_counter()
        # 4a. the UNet on both branches, then guidance: ε̂ = ε_u + s·(ε_c − ε_u)
        unet_out, noise = await self._predict_noise(i, t, scheduler, latent, text_states, loop, timings)
        # 4b. the scheduler's update: x_{t−1} and the predicted x̂₀, each a linear combination of x_t and ε̂s
        result = scheduler.step(noise["guided"], i, latent, self.ops)
        loop.names.step(i, latent, noise["guided"])
        update, x0_update = loop.names.describe(result.prev_sample), loop.names.describe(result.pred_original_sample)
        prev_latent = await self._timed_value(result.prev_sample, timings)
        pred_x0 = (
            await self._timed_value(result.pred_original_sample, timings) if result.pred_original_sample is not None else None
        )
        loop.loop_ms += (time.perf_counter() - t0) * 1000
        # 4c. for the views: x̂₀ decoded (within the preview budget) and placed on the UMAP
        image = await self._preview(i, pred_x0, loop, timings)
        umap = await self._umap_position(pred_x0, timings)
        attention = unet_out.get(ATTENTION_OUTPUT)
        step = StepTrace(
            index=i,
            timestep=float(t),
            coefficients=dict(result.coefficients),
            update=update,
            x0_update=x0_update,
            latent=await be.to_host(latent),
            noise_uncond=await be.to_host(noise["uncond"]),
            noise_cond=await be.to_host(noise["cond"]),
            noise_guided=await be.to_host(noise["guided"]),
            pred_x0=await be.to_host(pred_x0) if pred_x0 is not None else None,
            image=image,
            timings_ms=timings,
            umap=umap,
            attention=await be.to_host(attention) if attention is not None else None,
        )
        timings["total"] = (time.perf_counter() - t0) * 1000
        return step, prev_latent

    async def _predict_noise(self, i: int, t: float, scheduler, latent, text_states, loop: _LoopState, timings: dict):
        """Step 4a: the UNet's noise prediction for [unconditional, conditional] and the guided mix."""
        be = self.backend
        scale = be.from_host(HostTensor.of([scheduler.scale_model_input_factor(i)], (1,)))
        sample = (await self._run("cfg_input", {"latent": latent, "scale": scale}, timings, "ops"))["sample"]  # (2, C, h, w)
        timestep = be.from_host(HostTensor.of([t], (), loop.timestep_dtype))
        unet_out = await self._run(
            "unet", {"sample": sample, "timestep": timestep, "encoder_hidden_states": text_states}, timings
        )
        noise = await self._run("guidance", {"noise_pred": unet_out["out_sample"], "scale": loop.guidance}, timings, "ops")
        return unet_out, noise  # noise: uncond, cond, guided

    async def _preview(self, i: int, pred_x0, loop: _LoopState, timings: dict) -> HostTensor | None:
        """Step 4c: x̂₀ decoded to RGBA when this step is previewed: every preview_every steps (and the last),
        or, with a preview budget, while decoding has cost at most that share of the loop's time."""
        if pred_x0 is None:
            return None
        wanted = previewed(i, loop.num_steps, loop.preview_every)
        if loop.preview_budget is not None:
            wanted = wanted and (i == 0 or loop.decode_ms <= loop.preview_budget * loop.loop_ms)
        if not wanted:
            return None
        t0 = time.perf_counter()
        image = await self.backend.to_host(await self.decode(pred_x0, timings))
        loop.decode_ms += (time.perf_counter() - t0) * 1000
        return image

    async def _umap_position(self, pred_x0, timings: dict) -> list | None:
        """Step 4c: x̂₀ projected onto the bundle's UMAP, [x, y], when the bundle has one."""
        if pred_x0 is None or not self.has("umap_project"):
            return None
        xy = await self.backend.to_host((await self._run("umap_project", {"x0": pred_x0}, timings, "views"))["xy"])
        return [float(xy.data[0]), float(xy.data[1])]

    async def decode_previews(
        self, trace: Trace, on_image: Callable[[StepTrace], Any] | None = None, should_stop: Callable[[], bool] | None = None
    ) -> None:
        """Decode the predicted image of every previewed step that has none yet (after a run with a preview budget)."""
        n = len(trace.steps)
        for i, step in enumerate(trace.steps):
            if step.image is not None or step.pred_x0 is None or not previewed(i, n, trace.request.preview_every):
                continue
            if should_stop and should_stop():
                return
            step.image = await self.backend.to_host(await self.decode(self.backend.from_host(step.pred_x0), step.timings_ms))
            if on_image:
                await _maybe_await(on_image(step))


def previewed(i: int, num_steps: int, every: int) -> bool:
    """Whether step i's x̂₀ is decoded as a preview: every `every`-th step and the last (never for 0)."""
    return bool(every) and (i % every == 0 or i == num_steps - 1)


async def _maybe_await(result) -> None:
    """Callbacks (on_step, on_image) may be plain functions or coroutines."""
    if hasattr(result, "__await__"):
        await result


def _accumulate(total: dict, timings: dict) -> None:
    for k, v in timings.items():
        total[k] = total.get(k, 0.0) + v


@dataclass
class _LoopState:
    """What the denoising loop carries from step to step besides the latent."""

    guidance: Any  # the guidance scale s as a backend tensor, (1,)
    timestep_dtype: str
    num_steps: int
    preview_every: int
    preview_budget: float | None
    names: _TermNames = field(default_factory=lambda: _TermNames())
    loop_ms: float = 0.0  # the loop's own time so far (UNet, guidance, update), previews excluded
    decode_ms: float = 0.0  # time spent decoding previews so far


class _TermNames:
    """Names for the tensors in a scheduler's update, so the page can write the rule out with this
    step's coefficients: x_t (this step's input), eps (this step's guided noise), eps@k (step k's,
    kept by multistep samplers). Keeps the last few steps' handles alive so ids are not reused."""

    def __init__(self, keep: int = 6):
        self.known: dict[int, tuple[Any, str]] = {}
        self.order: list[int] = []
        self.keep = keep

    def step(self, i: int, latent, guided) -> None:
        for k, (h, name) in list(self.known.items()):
            if name in ("x_t", "eps"):
                self.known[k] = (h, f"x@{i - 1}" if name == "x_t" else f"eps@{i - 1}")
        self.known[id(latent)] = (latent, "x_t")
        self.known[id(guided)] = (guided, "eps")
        self.order += [id(latent), id(guided)]
        while len(self.order) > 2 * self.keep:
            self.known.pop(self.order.pop(0), None)

    def describe(self, expr) -> list:
        if expr is None:
            return []
        terms = expr.terms if isinstance(expr, Expr) else [[1.0, expr]]
        return [[float(c), self.known.get(id(h), (h, "other"))[1]] for c, h in terms]

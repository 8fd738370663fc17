"""The denoising loop: prompt → tokens → text states → UNet steps with guidance → image, traced.

Why a Trace: the page's views only render what the controller recorded here, so every number a
reader sees is a number the model really produced in this run.
"""
from __future__ import annotations

import time
from typing import Any, Callable

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
            bundle.read_text(tok["files"]["vocab"]), bundle.read_text(tok["files"]["merges"]),
            max_length=tok["max_length"], pad_token=tok.get("pad_token", "<|endoftext|>"),
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
        trace.clip = ClipScores(list(prompts), final, [[i, row] for i, row in zip(indices, rest)], scale)
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
            raise BundleError(f"bundle component {name} does not match its manifest: the model takes ({', '.join(got_in)}) and gives "
                              f"({', '.join(got_out)}), the manifest promises ({', '.join(want_in)}) → ({', '.join(want_out)}); "
                              "re-export the bundle")

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
        sched = make_scheduler(req.scheduler, self.bundle.manifest["scheduler"]["config"], self.bundle.model.get("prediction_type"))
        sched.set_timesteps(req.steps)
        return sched

    def plan(self, request: Request) -> Plan:
        """Validate the request and work out what the run will do: tokens, timesteps, noise schedule.

        Computed once per run: the page announces it (run-start) and generate() runs it."""
        req = request.validate(self.bundle.manifest["scheduler"]["default"])
        sched = self._scheduler(req)
        tokens, negative = self.tokenizer.encode(req.prompt), self.tokenizer.encode(req.negative_prompt)
        return Plan(
            request=req, tokens=tokens, negative_tokens=negative,
            token_known=self._known(tokens), negative_token_known=self._known(negative),
            timesteps=[float(t) for t in sched.timesteps], scheduler_label=sched.label,
            scheduler_config={k: v for k, v in sched.config.items() if isinstance(v, (int, float, str, bool)) or v is None},
            alphas_cumprod=list(sched.alphas_cumprod), sigmas=list(sched.sigmas) if sched.sigmas is not None else None,
            init_noise_sigma=float(sched.init_noise_sigma), _scheduler=sched,
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

    async def generate(self, request: Request | Plan, on_step: Callable[[StepTrace], Any] | None = None,
                       should_stop: Callable[[], bool] | None = None, initial_latents: HostTensor | None = None,
                       preview_budget: float | None = None) -> Trace:
        """Run the plan. preview_budget (the page): instead of preview_every, decode a step's predicted
        image only while decoding has cost at most this share of the loop's time so far; the rest are
        decoded after the loop by decode_previews(), off the loop's critical path."""
        if self.ops is None:
            raise RuntimeError("call `await pipeline.load()` before generate()")
        plan = request if isinstance(request, Plan) else self.plan(request)
        req = plan.request
        be, ops = self.backend, self.ops
        t_start = time.perf_counter()
        trace = Trace(plan, backend=be.name)
        run_t: dict = {}

        ids_dtype = self.bundle.input_dtype("text_encoder", "input_ids")
        ids = be.from_host(HostTensor.of(trace.negative_tokens.ids + trace.tokens.ids, (2, len(trace.tokens.ids)), ids_dtype))
        states = (await self._run("text_encoder", {"input_ids": ids}, run_t))["last_hidden_state"]
        trace.embeddings = await be.to_host(states)

        # the plan's scheduler, once: multistep samplers keep history, so a plan run again gets a fresh one
        sched, plan._scheduler = plan._scheduler or self._scheduler(req), None
        noise = initial_latents if initial_latents is not None else self.initial_noise(req.seed)
        latent = await ops.value(ops.lincomb([(sched.init_noise_sigma, be.from_host(noise))]))
        t_dtype = self.bundle.input_dtype("unet", "timestep")
        g = be.from_host(HostTensor.of([req.guidance], (1,)))
        names = _TermNames()
        loop_ms = decode_ms = 0.0

        try:
            for i, t in enumerate(sched.timesteps):
                if should_stop and should_stop():
                    raise Cancelled()
                st: dict = {}
                t0 = time.perf_counter()
                scale = be.from_host(HostTensor.of([sched.scale_model_input_factor(i)], (1,)))
                sample = (await self._run("cfg_input", {"latent": latent, "scale": scale}, st, "ops"))["sample"]
                timestep = be.from_host(HostTensor.of([t], (), t_dtype))
                unet_out = await self._run("unet", {"sample": sample, "timestep": timestep, "encoder_hidden_states": states}, st)
                pred = unet_out["out_sample"]
                gd = await self._run("guidance", {"noise_pred": pred, "scale": g}, st, "ops")
                res = sched.step(gd["guided"], i, latent, ops)
                names.step(i, latent, gd["guided"])
                update, x0_update = names.describe(res.prev_sample), names.describe(res.pred_original_sample)
                new_latent = await self._timed_value(res.prev_sample, st)
                x0 = await self._timed_value(res.pred_original_sample, st) if res.pred_original_sample is not None else None
                loop_ms += (time.perf_counter() - t0) * 1000
                image = None
                last = i == len(sched.timesteps) - 1
                if preview_budget is not None:
                    want = x0 is not None and (i == 0 or decode_ms <= preview_budget * loop_ms)
                else:
                    want = x0 is not None and req.preview_every and (i % req.preview_every == 0 or last)
                if want:
                    t1 = time.perf_counter()
                    image = await be.to_host(await self.decode(x0, st))
                    decode_ms += (time.perf_counter() - t1) * 1000
                umap = None
                if x0 is not None and self.has("umap_project"):
                    xy = await be.to_host((await self._run("umap_project", {"x0": x0}, st, "views"))["xy"])
                    umap = [float(xy.data[0]), float(xy.data[1])]
                attention = unet_out.get(ATTENTION_OUTPUT)
                step = StepTrace(
                    i, float(t), dict(res.coefficients), update, x0_update, await be.to_host(latent), await be.to_host(gd["uncond"]),
                    await be.to_host(gd["cond"]), await be.to_host(gd["guided"]), await be.to_host(x0) if x0 is not None else None,
                    image, st, umap, await be.to_host(attention) if attention is not None else None,
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

    async def decode_previews(self, trace: Trace, on_image: Callable[[StepTrace], Any] | None = None,
                              should_stop: Callable[[], bool] | None = None) -> None:
        """Decode the predicted image of every step that has none yet (after a run with a preview budget)."""
        for step in trace.steps:
            if step.image is not None or step.pred_x0 is None:
                continue
            if should_stop and should_stop():
                return
            step.image = await self.backend.to_host(await self.decode(self.backend.from_host(step.pred_x0), step.timings_ms))
            if on_image:
                r = on_image(step)
                if hasattr(r, "__await__"):
                    await r


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
                self.known[k] = (h, "x@%d" % (i - 1) if name == "x_t" else "eps@%d" % (i - 1))
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

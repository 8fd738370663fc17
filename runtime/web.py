"""The web backend: onnxruntime-web through Pyodide's FFI, and the page worker's entry point.

Runs only inside Pyodide (web/src/worker.ts imports it from runtime.zip). `js` and `pyodide.ffi`
are imported inside functions, so this module still imports in CPython for tooling and tests.

Why handles wrap ort.Tensor proxies: under WebGPU, session outputs stay in GPU buffers
(preferredOutputLocation 'gpu-buffer') so a latent never leaves the GPU between steps, and such a
buffer is freed only by tensor.dispose(), never by a garbage collector; the wrapper disposes it
when the controller drops its last reference.
"""

from __future__ import annotations

import json
import posixpath
import time
from array import array
from types import SimpleNamespace

from .backend import TYPECODES, HostTensor
from .bundle import Bundle, BundleError, check_manifest
from .pipeline import Pipeline
from .trace import RUN_DONE_FIELDS, Request, describe_bundle, step_message, to_message

PREVIEW_BUDGET = 0.1  # decoding previews may add at most this share to the loop's time (the rest follow the run)
# The page decodes x̂₀ at about this many evenly spaced steps (Request.preview_every from the step count),
# any other step when the reader picks it: a VAE decode costs about two UNet steps on the CPU, so
# decoding all of them made the reader wait ~1.5× the run for the views (issue 24).
PAGE_PREVIEWS = 6
JS_ARRAYS = {"float32": "Float32Array", "uint8": "Uint8Array", "int64": "BigInt64Array", "int32": "Int32Array"}


def _js():
    import js

    return js


def _to_js(value):
    """Python dicts → plain JS objects (not Maps), lists → arrays; JS proxies pass through."""
    from pyodide.ffi import to_js

    return to_js(value, dict_converter=_js().Object.fromEntries)


class WebTensor:
    """A backend handle: an ort.Tensor proxy (`.js`); GPU-resident ones are disposed on drop."""

    __slots__ = ("js", "on_gpu")

    def __init__(self, js_tensor, on_gpu: bool = False):
        self.js = js_tensor
        self.on_gpu = on_gpu

    def dispose(self) -> None:
        if self.on_gpu and self.js is not None:
            try:
                self.js.dispose()
            except Exception:  # already disposed, or the session is gone
                pass
        self.js = None

    def __del__(self):
        self.dispose()


class WebBackend:
    """The Backend protocol on onnxruntime-web; sessions are created from bytes the page already holds.

    `files` is the JS Map (bundle-relative path → Uint8Array) filled by the page's bundle loader,
    so model bytes go straight from the loader to ORT without passing through Python's heap.
    """

    def __init__(self, ort, files, provider: str = "wasm"):
        if provider not in ("wasm", "webgpu"):
            raise ValueError(f"unknown execution provider {provider!r}; use 'wasm' or 'webgpu'")
        self.ort = ort
        self.files = files
        self.provider = provider
        self.sessions: dict = {}
        self.output_names: dict[str, list[str]] = {}
        version = str(ort.env.versions.web) if ort.env.versions.web else "?"
        detail = "WebGPU" if provider == "webgpu" else f"WASM, {int(ort.env.wasm.numThreads or 1)} thread(s)"
        self.name = f"onnxruntime-web {version} ({detail})"

    def _bytes(self, rel: str):
        data = self.files.get(rel)
        if data is None:
            raise BundleError(f"bundle file {rel} was not loaded by the page; reload the page")
        return data

    async def load(self, name: str, files: list[str]) -> None:
        options = {"executionProviders": [self.provider], "graphOptimizationLevel": "all", "logSeverityLevel": 3}
        if len(files) > 1:
            # ORT-web cannot open side files itself: hand it the bytes under the path the model names
            # (the external data's `location`, relative to the model file's folder).
            folder = posixpath.dirname(files[0])
            options["externalData"] = [
                {"path": posixpath.relpath(rel, folder or "."), "data": self._bytes(rel)} for rel in files[1:]
            ]
        if self.provider == "webgpu":
            options["preferredOutputLocation"] = "gpu-buffer"
        session = await self.ort.InferenceSession.create(self._bytes(files[0]), _to_js(options))
        self.sessions[name] = session
        self.output_names[name] = [str(n) for n in session.outputNames]

    def io_names(self, name: str) -> tuple[list[str], list[str]]:
        session = self.sessions[name]
        return [str(n) for n in session.inputNames], [str(n) for n in session.outputNames]

    async def run(self, name: str, feeds: dict) -> dict:
        session = self.sessions[name]
        results = await session.run(_to_js({k: h.js for k, h in feeds.items()}))
        get = _js().Reflect.get
        out = {k: get(results, k) for k in self.output_names[name]}
        return {k: WebTensor(t, str(t.location) == "gpu-buffer") for k, t in out.items()}

    def from_host(self, t: HostTensor) -> WebTensor:
        typed = getattr(_js(), JS_ARRAYS[t.dtype]).new(len(t.data))
        typed.assign(t.data)  # one copy, straight from the array's buffer
        return WebTensor(self.ort.Tensor.new(t.dtype, typed, _to_js(list(t.shape))))

    async def to_host(self, handle: WebTensor) -> HostTensor:
        t = handle.js
        data = await t.getData()  # downloads a GPU tensor; a CPU tensor's own array otherwise
        dtype = str(t.type)
        out = array(TYPECODES[dtype], bytes(data.byteLength))
        data.assign_to(out)
        return HostTensor(out, tuple(int(d) for d in t.dims), dtype)

    def release(self, handle: WebTensor) -> None:
        handle.dispose()

    def close(self) -> None:
        """Release every session (the page moves to another provider when its GPU device is lost)."""
        for session in self.sessions.values():
            try:
                session.release()
            except Exception:  # noqa: BLE001 - a session on a lost device may fail to release; it is dropped either way
                pass
        self.sessions.clear()


# ---- the worker's entry point: messages typed in web/src/lib/protocol.ts, built from runtime/trace.py ----


def tensor_message(t: HostTensor | None, transfer: list):
    """HostTensor → {dtype, shape, data: ArrayBuffer}; the buffer joins `transfer` (moved, not copied)."""
    if t is None:
        return None
    typed = getattr(_js(), JS_ARRAYS[t.dtype]).new(len(t.data))
    typed.assign(t.data)
    transfer.append(typed.buffer)
    return {"dtype": t.dtype, "shape": list(t.shape), "data": typed.buffer}


def request_from_js(r: dict) -> Request:
    """The page's request (camelCase) as a Request; values pass through as they came, so that
    Request.validate words any problem (an empty number field arrives as None)."""
    default = Request.default
    return Request(
        prompt=r.get("prompt", ""),
        negative_prompt=r.get("negativePrompt", default("negative_prompt")),
        seed=r.get("seed", default("seed")),
        guidance=r.get("guidance", default("guidance")),
        steps=r.get("steps", default("steps")),
        scheduler=r.get("scheduler") or default("scheduler"),
        preview_every=r.get("previewEvery", default("preview_every")),
    )


class Engine:
    """One bundle + backend + pipeline for the page's worker."""

    def __init__(self, manifest_json: str, files, ort, provider: str, location: str = ""):
        manifest = check_manifest(json.loads(manifest_json))
        decoder = _js().TextDecoder.new()

        def read_text(rel: str) -> str:
            data = files.get(rel)
            if data is None:
                raise BundleError(f"bundle file {rel} was not loaded by the page; reload the page")
            return str(decoder.decode(data))

        self.bundle = Bundle(manifest, read_text, location)
        self.backend = WebBackend(ort, files, provider)
        self.pipeline = Pipeline(self.bundle, self.backend)
        self.last = None  # (run id, its prompt and images) of the last finished run: what CLIP scores

    async def load(self, progress=None):
        """Create every session; returns {component: ms} as a JS object."""
        return _to_js(await self.pipeline.load(progress))

    def close(self) -> None:
        self.backend.close()

    def describe(self) -> dict:
        """What the page's controls need from the runtime (not copies in TypeScript): the schedulers
        with their labels and the bundle's default, the tokenizer's window, and a request's limits and
        defaults (`request`: Request.describe, with the model card's first example and guidance)."""
        return _to_js(self.description())

    def description(self) -> dict:
        """describe() as Python data (tests read it without Pyodide)."""
        default = self.bundle.manifest["scheduler"]["default"]
        return {
            **describe_bundle(self.bundle.manifest),
            "previewBudget": PREVIEW_BUDGET,
            "previews": PAGE_PREVIEWS,
            "hasClip": self.pipeline.has_clip(),
            "request": Request.describe(default, self.bundle.manifest.get("about")),
        }

    async def generate(
        self, run_id: int, request, post, is_stopped, yield_to_events=None, preview_budget=PREVIEW_BUDGET, main: bool = True
    ) -> None:
        """Run one request, posting run-start (the plan), a run-step per step (tensors transferred),
        run-done, then a run-image per step whose predicted image was decoded after the loop.

        Why a preview budget: decoding every step's predicted x0 through the VAE costs about as much
        as the UNet step itself; during the loop only as many are decoded as keep the loop within
        (1 + budget)× its plain time, and the rest follow the run, off its critical path."""
        try:
            plan = self.pipeline.plan(request_from_js(request.to_py()))
        except ValueError as e:
            post(_to_js({"type": "run-invalid", "runId": run_id, "text": str(e)}))
            return
        no_tensors = lambda t: None  # noqa: E731 - the plan has none
        post(_to_js({"type": "run-start", "runId": run_id, **to_message(plan, no_tensors)}))

        async def on_step(step):
            transfer: list = []
            msg = {"type": "run-step", "runId": run_id, "step": step_message(step, lambda t: tensor_message(t, transfer))}
            post(_to_js(msg), _to_js(transfer))
            if callable(yield_to_events):  # no shared stop flag: let the 'stop' message in
                await yield_to_events()

        t = time.perf_counter()
        budget = PREVIEW_BUDGET if preview_budget is None else float(preview_budget)
        budget = None if budget < 0 else budget
        stopped = lambda: bool(is_stopped())  # noqa: E731
        trace = await self.pipeline.generate(
            plan, on_step=on_step, should_stop=stopped, preview_budget=budget if plan.request.preview_every else None
        )
        transfer: list = []
        done = to_message(trace, lambda x: tensor_message(x, transfer), only=RUN_DONE_FIELDS)
        done["timingsMs"]["wall"] = (time.perf_counter() - t) * 1000
        post(_to_js({"type": "run-done", "runId": run_id, **done}), _to_js(transfer))
        if budget is None or trace.cancelled or not plan.request.preview_every:
            return

        async def on_image(step):
            transfer: list = []
            post(
                _to_js(
                    {"type": "run-image", "runId": run_id, "index": step.index, "image": tensor_message(step.image, transfer)}
                ),
                _to_js(transfer),
            )
            if callable(yield_to_events):
                await yield_to_events()

        await self.pipeline.decode_previews(trace, on_image, should_stop=stopped)
        if not main:  # a view's extra run (other scales, seeds, the compare prompt): CLIP scores the reader's run
            return
        # what CLIP needs of the run, not the Trace itself: a Trace kept here outlived its run in Pyodide
        # (20-run leak test), while these few host images are replaced run by run
        self.last = (
            run_id,
            SimpleNamespace(
                request=trace.request,
                image=trace.image,
                clip=None,
                steps=[SimpleNamespace(index=s.index, image=s.image) for s in trace.steps],
            ),
        )
        if self.pipeline.has_clip() and not stopped():
            await self.post_clip(post, [])

    async def decode_step(self, run_id: int, index: int, latent, post) -> None:
        """A step's x̂₀ (the page's copy, {dtype, shape, data}) decoded when the reader picks a step that
        was not previewed; posted as that run's run-image."""
        f = latent.to_py(depth=1) if hasattr(latent, "to_py") else latent
        js = _js()
        tensor = self.backend.ort.Tensor.new(
            str(f["dtype"]), js.Float32Array.new(f["data"]), _to_js([int(d) for d in f["shape"]])
        )
        image = await self.backend.to_host(await self.pipeline.decode(WebTensor(tensor), {}))
        transfer: list = []
        post(
            _to_js({"type": "run-image", "runId": run_id, "index": index, "image": tensor_message(image, transfer)}),
            _to_js(transfer),
        )

    def clip_prompts(self, extra: list) -> list[str]:
        """The run's prompt, then the reader's alternatives, then the model card's examples."""
        _, trace = self.last
        out = []
        for p in [
            trace.request.prompt,
            *[str(e)[:300] for e in extra][:8],
            *self.bundle.manifest.get("about", {}).get("examples", []),
        ]:
            if p not in out:
                out.append(p)
        return out[:16]

    async def post_clip(self, post, extra) -> None:
        """CLIP's similarities for the last run (after it, and again when the reader adds alternatives)."""
        if self.last is None or not self.pipeline.has_clip():
            return
        run_id, trace = self.last
        extra = extra.to_py() if hasattr(extra, "to_py") else list(extra or [])
        scores = await self.pipeline.clip_scores(trace, self.clip_prompts(extra))
        post(_to_js({"type": "run-clip", "runId": run_id, "clip": to_message(scores, lambda t: None)}))

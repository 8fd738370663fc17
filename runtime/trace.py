"""The Trace schema, defined once: a run's request, its plan and everything each step produced.

Why one place: the worker's messages (runtime/web.py), the CLI's trace folder (app/cli.py) and the
page's TypeScript types (web/src/lib/protocol.ts, checked by tests/test_trace_schema.py) all derive
from these dataclasses; a field's message key is its name in camelCase.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from .backend import HostTensor
from .schedulers import SCHEDULERS
from .tokenizer import Tokenized

# The one source of a request's limits and defaults: the page (Engine.describe) and the CLI read them here.
MAX_PROMPT_CHARS = 5000
MAX_SEED = 2**32 - 1
MIN_STEPS, MAX_STEPS = 1, 100
MIN_GUIDANCE, MAX_GUIDANCE = 0.0, 20.0
DEFAULT_PROMPT = "a red apple on a blue background"  # when the bundle's model card has no examples


@dataclass
class Request:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    guidance: float = 7.5
    steps: int = 25
    scheduler: str = ""  # empty: the bundle's default
    preview_every: int = 1  # decode the predicted image every N steps (0: never)

    @classmethod
    def default(cls, name: str):
        """A field's default value (Request.default("guidance") → 7.5)."""
        return next(f.default for f in fields(cls) if f.name == name)

    @classmethod
    def describe(cls, default_scheduler: str = "", about: dict | None = None) -> dict:
        """The limits and defaults of a request in the page's shape (camelCase keys). about: the
        bundle's model card (manifest["about"]): its first example is the default prompt, its
        guidance the default scale."""
        about = about or {}
        examples = about.get("examples") or []
        guidance = about.get("guidance")
        return {
            "limits": {
                "seed": {"min": 0, "max": MAX_SEED},
                "steps": {"min": MIN_STEPS, "max": MAX_STEPS},
                "guidance": {"min": MIN_GUIDANCE, "max": MAX_GUIDANCE},
                "promptChars": {"max": MAX_PROMPT_CHARS},
            },
            "defaults": {
                "prompt": str(examples[0]) if examples else DEFAULT_PROMPT,
                "negativePrompt": cls.default("negative_prompt"),
                "seed": cls.default("seed"),
                "guidance": float(guidance)
                if isinstance(guidance, (int, float)) and not isinstance(guidance, bool)
                else cls.default("guidance"),
                "steps": cls.default("steps"),
                "scheduler": default_scheduler or cls.default("scheduler"),
                "previewEvery": cls.default("preview_every"),
            },
        }

    def validate(self, default_scheduler: str) -> Request:
        """Check every field; the ValueError message names the field and the allowed range."""
        for name in ("prompt", "negative_prompt"):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise ValueError(f"{name} must be text")
            if len(v) > MAX_PROMPT_CHARS:
                raise ValueError(
                    f"{name} is {len(v)} characters; at most {MAX_PROMPT_CHARS} are accepted (CLIP reads only 75 tokens anyway)"
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not MIN_STEPS <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be a whole number from {MIN_STEPS} to {MAX_STEPS}")
        try:
            g = float(self.guidance)
        except (TypeError, ValueError):
            raise ValueError(f"guidance scale must be a number from {MIN_GUIDANCE:g} to {MAX_GUIDANCE:g}") from None
        if not math.isfinite(g) or not MIN_GUIDANCE <= g <= MAX_GUIDANCE:
            raise ValueError(f"guidance scale must be a number from {MIN_GUIDANCE:g} to {MAX_GUIDANCE:g}")
        self.guidance = g
        self.scheduler = self.scheduler or default_scheduler
        if not isinstance(self.scheduler, str) or self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if isinstance(self.preview_every, bool) or not isinstance(self.preview_every, int) or self.preview_every < 0:
            raise ValueError("preview_every must be a whole number ≥ 0")
        return self


# what the page's views read of a bundle's model facts (sizes, channels, scaling)
PAGE_MODEL_KEYS = (
    "architecture",
    "prediction_type",
    "image_size",
    "latent_size",
    "latent_channels",
    "vae_scaling_factor",
    "vae_scale_factor",
    "text_hidden_size",
    "text_max_length",
)


def describe_bundle(manifest: dict) -> dict:
    """What the page shows of a bundle, from its manifest: one definition for the live engine
    (runtime/web.py) and for a replayed trace (runtime/tracefile.py)."""
    default = manifest["scheduler"]["default"]
    model = manifest["model"]
    return {
        "schedulers": [{"name": n, "label": cls.label, "isDefault": n == default} for n, cls in SCHEDULERS.items()],
        "maxLength": int(manifest["tokenizer"]["max_length"]),
        "vocabulary": dict((manifest.get("about") or {}).get("vocabulary") or {}),
        "model": {k: model.get(k) for k in PAGE_MODEL_KEYS},
    }


@dataclass(kw_only=True)
class Plan:
    """What a run will do, known before the first UNet call (computed once by Pipeline.plan)."""

    request: Request
    tokens: Tokenized
    negative_tokens: Tokenized
    timesteps: list  # one per step (PNDM runs steps + 1)
    scheduler_label: str
    scheduler_config: dict  # the scheduler's resolved config (diffusers' keys)
    alphas_cumprod: list  # ᾱ over the training timesteps 0 … T−1: the noise schedule
    sigmas: list | None  # σ per step for the σ-parameterised samplers (Euler, LMS, DPM-Solver++), else None
    init_noise_sigma: float
    token_known: list | None  # per prompt token: does the model card list its word? None: the card lists no words
    negative_token_known: list | None
    # the scheduler set up for these timesteps, handed to the run (not part of any message: a leading _)
    _scheduler: Any = field(default=None, repr=False, compare=False)


@dataclass(kw_only=True)  # built by keyword: two swapped tensors of one shape would otherwise pass silently
class StepTrace:
    index: int
    timestep: float
    coefficients: dict  # the scheduler's scalars for this step (numbers only reach the page)
    update: list  # x_{t-1} as the lincomb the runtime ran: [[coefficient, term]], term x_t | eps | eps@k | x@k
    x0_update: list  # the predicted x0 likewise
    latent: HostTensor  # x_t, the input of this step
    noise_uncond: HostTensor
    noise_cond: HostTensor
    noise_guided: HostTensor
    pred_x0: HostTensor | None
    image: HostTensor | None  # decoded predicted x0 (uint8 H×W×4), when previewed
    timings_ms: dict
    umap: list | None = None  # [x, y]: predicted x0 projected onto the bundle's cached UMAP, when it has one
    attention: HostTensor | None = None  # [tokens, h, w]: the UNet's cross-attention per token, conditional branch


@dataclass(kw_only=True)
class ClipScores:
    """CLIP's similarities for a run (computed after it): the final image and each step's predicted image
    against the prompt and alternatives; logit_scale turns them into CLIP's softmax percentages."""

    prompts: list
    final: list | None  # one similarity per prompt
    steps: list  # per step with a decoded image: [step index, [similarity per prompt]]
    logit_scale: float


@dataclass
class Trace:
    plan: Plan
    embeddings: HostTensor | None = None  # [2, max_length, d]: unconditional (negative prompt) then conditional
    steps: list = field(default_factory=list)
    final_latent: HostTensor | None = None
    image: HostTensor | None = None
    timings_ms: dict = field(default_factory=dict)
    backend: str = ""
    cancelled: bool = False
    clip: ClipScores | None = None  # after the run, when the bundle has CLIP (run-clip message)

    # the plan's fields, read through the trace (trace.tokens, trace.request …)
    @property
    def request(self) -> Request:
        return self.plan.request

    @property
    def tokens(self) -> Tokenized:
        return self.plan.tokens

    @property
    def negative_tokens(self) -> Tokenized:
        return self.plan.negative_tokens

    @property
    def timesteps(self) -> list:
        return self.plan.timesteps


# fields of the run that the page's run-done message carries (the plan went with run-start, steps one by one)
RUN_DONE_FIELDS = ("embeddings", "final_latent", "image", "timings_ms", "backend", "cancelled")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def to_message(value: Any, tensor: Callable[[HostTensor], Any], only: tuple | None = None) -> Any:
    """A schema object as plain data with camelCase keys; `tensor` turns each HostTensor into what
    the receiver takes (the worker: a transferred ArrayBuffer; the CLI: a file reference)."""
    if isinstance(value, HostTensor):
        return tensor(value)
    if is_dataclass(value):
        names = only or tuple(f.name for f in fields(value) if not f.name.startswith("_"))
        return {camel(n): to_message(getattr(value, n), tensor) for n in names}
    if isinstance(value, dict):
        return {str(k): to_message(v, tensor) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_message(v, tensor) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None  # handles and other host objects never leave the runtime


def step_message(step: StepTrace, tensor: Callable[[HostTensor], Any]) -> dict:
    msg = to_message(step, tensor)
    msg["coefficients"] = {
        k: float(v) for k, v in step.coefficients.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return msg

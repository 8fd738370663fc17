"""Denoising schedulers (samplers) that reproduce diffusers' numbers in pure Python.

Stable Diffusion checkpoints ship a diffusers ``scheduler_config.json``; any of
the samplers here can be built from it, and each one matches its diffusers
counterpart (0.39) step for step, so the browser shows what the reference
library would compute.

Tensors never go through Python arithmetic: Pyodide has no numpy and
element-wise loops would be far too slow. A scheduler only computes scalar
coefficients and asks the backend for linear combinations,
``ops.lincomb([(c0, x0), (c1, x1), ...])``, which the backend runs as a tiny
ONNX graph. Tensors are opaque handles here.

The training noise schedule (betas -> alphas_cumprod -> sigmas) is rebuilt with
float32 rounding after every operation, the way torch builds it, so timesteps
match diffusers exactly and sigmas to a float32 ulp or two (torch.linspace's
own rounding depends on the CPU); per-step coefficients are computed in double
precision. Multistep history is kept as handles the scheduler made itself.

A scheduler name selects one fixed diffusers algorithm (for instance
"dpmpp_2m" is DPMSolverMultistepScheduler with algorithm_type "dpmsolver++"
and solver_order 2). The config supplies what belongs to the model: the beta
schedule, timestep spacing, steps offset, prediction type and so on, read with
the defaults of the diffusers class, as ``XScheduler.from_config`` does. Config
values that would make diffusers run a variant not implemented here (Karras
sigmas, thresholding, sample clipping, ...) raise ValueError instead of
silently giving other numbers. So do step counts where diffusers itself breaks
(a timestep past the training range, repeated noise levels in the multistep
solvers); for "trailing" counts where numpy's arange appends a stray t = -1,
DDIM and PNDM drop it rather than read alphas_cumprod[-1] as diffusers does.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .backend import Ops

__all__ = [
    "StepResult",
    "Scheduler",
    "EulerScheduler",
    "DDIMScheduler",
    "DPMSolverPP2MScheduler",
    "PNDMScheduler",
    "LMSScheduler",
    "SCHEDULERS",
    "SCHEDULER_LABELS",
    "make_scheduler",
]


@dataclass
class StepResult:
    prev_sample: Any
    # The model's current guess of the clean latent: the explainer shows it.
    pred_original_sample: Any | None
    # The scalars behind this step, for display.
    coefficients: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------
# float32 and numpy emulation (diffusers builds its tables with them)
# --------------------------------------------------------------------------


def _f32(x: float) -> float:
    return array("f", (x,))[0]


def _f32_list(xs: list[float]) -> list[float]:
    return list(array("f", xs))


def _np_linspace(start: float, stop: float, num: int) -> list[float]:
    """numpy.linspace in float64: i * step + start, with the end point exact."""
    if num == 1:
        return [float(start)]
    step = (stop - start) / (num - 1)
    values = [i * step + start for i in range(num)]
    values[-1] = float(stop)
    return values


def _np_arange(start: float, stop: float, step: float) -> list[float]:
    """numpy.arange with a float step, including its length rounding.

    numpy sizes the result as ceil((stop - start) / step) and fills it with
    start + i * (first_step), so e.g. arange(1000, 0, -1000 / 61) has 62
    elements, the last one about 1e-13; diffusers inherits that extra step.
    """
    length = math.ceil((stop - start) / step)
    if length <= 0:
        return []
    first, second = float(start), start + step
    delta = second - first
    return [first, second][:length] + [first + i * delta for i in range(2, length)]


def _np_interp(x: float, fp: list[float]) -> float:
    """numpy.interp(x, arange(len(fp)), fp), clamping outside the range."""
    last = len(fp) - 1
    if x <= 0:
        return fp[0]
    if x >= last:
        return fp[last]
    j = math.floor(x)
    if x == j:
        return fp[j]
    return (fp[j + 1] - fp[j]) * (x - j) + fp[j]


# --------------------------------------------------------------------------
# training noise schedule
# --------------------------------------------------------------------------


def _torch_linspace_f32(start: float, stop: float, num: int) -> list[float]:
    # torch.linspace(dtype=float32) rounds start/stop to float32 first. Its
    # kernel's own rounding is CPU dependent (vector width), so only the
    # exact values rounded to float32 are reproducible; they agree within 1 ulp.
    start, stop = _f32(start), _f32(stop)
    if num == 1:
        return [start]
    return _f32_list([start + i * (stop - start) / (num - 1) for i in range(num)])


def _cosine_betas(num: int, max_beta: float = 0.999) -> list[float]:
    """diffusers' betas_for_alpha_bar (Nichol & Dhariwal's cosine schedule)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return _f32_list([min(1 - alpha_bar((i + 1) / num) / alpha_bar(i / num), max_beta) for i in range(num)])


def _betas(schedule: str, beta_start: float, beta_end: float, num: int, trained) -> list[float]:
    if trained is not None:
        return _f32_list([float(b) for b in trained])
    if schedule == "linear":
        return _torch_linspace_f32(beta_start, beta_end, num)
    if schedule == "scaled_linear":
        return _f32_list([b * b for b in _torch_linspace_f32(beta_start**0.5, beta_end**0.5, num)])
    if schedule == "squaredcos_cap_v2":
        return _cosine_betas(num)
    raise ValueError(f"beta_schedule {schedule!r} is not supported; use 'linear', 'scaled_linear' or 'squaredcos_cap_v2'")


def _alphas_cumprod(betas: list[float]) -> list[float]:
    # torch's CPU cumprod accumulates float32 inputs in double and rounds
    # each output to float32.
    out, prod = [], 1.0
    for alpha in _f32_list([1.0 - b for b in betas]):
        prod *= alpha
        out.append(prod)
    return _f32_list(out)


def _train_sigmas(alphas_cumprod: list[float]) -> list[float]:
    """((1 - a) / a) ** 0.5 in float32, as the k-diffusion style schedulers store it."""
    return _f32_list([math.sqrt(_f32(_f32(1.0 - a) / a)) for a in alphas_cumprod])


# --------------------------------------------------------------------------
# helpers shared by the samplers
# --------------------------------------------------------------------------


def _combine(ops: Ops, terms: list[tuple[float, Any]]) -> Any:
    """ops.lincomb without zero terms (the backend's Ops splits long sums by the bundle's terms limit)."""
    kept = [(float(c), x) for c, x in terms if c != 0.0] or [(0.0, terms[0][1])]
    return ops.lincomb(kept)


def _keep(ops: Ops, x: Any) -> Any:
    """Own a copy of a caller's tensor: multistep history must outlive the caller's handles."""
    return ops.lincomb([(1.0, x)])


def _vp_x0(prediction_type: str, alpha: float, sigma: float) -> tuple[float, float]:
    """(on_sample, on_output) with x0 = on_sample * sample + on_output * model_output, for
    sample = alpha * x0 + sigma * noise (alpha = sqrt(alpha_prod_t), sigma = sqrt(1 - alpha_prod_t))."""
    if prediction_type == "epsilon":
        return 1.0 / alpha, -sigma / alpha
    if prediction_type == "v_prediction":
        return alpha, -sigma
    return 0.0, 1.0  # "sample"


def _vp_eps(prediction_type: str, alpha: float, sigma: float) -> tuple[float, float]:
    """(on_sample, on_output) with noise = on_sample * sample + on_output * model_output (same parametrisation)."""
    if prediction_type == "epsilon":
        return 0.0, 1.0
    if prediction_type == "v_prediction":
        return sigma, alpha
    return 1.0 / sigma, -alpha / sigma  # "sample"


def _k_x0(prediction_type: str, sigma: float) -> tuple[float, float]:
    """(on_sample, on_output) with x0 = on_sample * sample + on_output * model_output, for sample = x0 + sigma * noise.

    This is the k-diffusion parametrisation of Euler and LMS, whose sample is
    the usual one divided by sqrt(alphas_cumprod).
    """
    if prediction_type == "epsilon":
        return 1.0, -sigma
    if prediction_type == "v_prediction":
        return 1.0 / (sigma * sigma + 1.0), -sigma / math.sqrt(sigma * sigma + 1.0)
    return 0.0, 1.0  # "sample"


# --------------------------------------------------------------------------
# schedulers
# --------------------------------------------------------------------------

# Keys every diffusers scheduler reads, with diffusers' defaults.
_COMMON_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "steps_offset": 0,
}
_SPACINGS = ("leading", "linspace", "trailing")
_OFF = (False, None)


class Scheduler:
    """Shared set-up: config reading, the training schedule, step bookkeeping."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    # Config keys and their diffusers defaults, on top of _COMMON_DEFAULTS.
    _defaults: ClassVar[dict[str, Any]] = {}
    # key -> (diffusers default, values this implementation reproduces).
    _restricted: ClassVar[dict[str, tuple[Any, tuple]]] = {}
    _prediction_types: ClassVar[tuple[str, ...]] = ("epsilon", "v_prediction", "sample")
    # Whether step() keeps history and so must see steps 0, 1, 2, ... in order.
    _multistep: ClassVar[bool] = False

    def __init__(self, config: dict | None = None, prediction_type: str | None = None):
        config = dict(config or {})
        cfg = {**_COMMON_DEFAULTS, **self._defaults}
        cfg.update({k: v for k, v in config.items() if k in cfg})
        for key, (default, allowed) in self._restricted.items():
            value = config.get(key, default)
            if value not in allowed:
                raise ValueError(
                    f"{self.label}: config {key}={value!r} is not supported here (supported: "
                    f"{', '.join(repr(a) for a in allowed)}); diffusers' default is {default!r}"
                )
        prediction_type = prediction_type or cfg["prediction_type"] or "epsilon"
        if prediction_type not in self._prediction_types:
            raise ValueError(
                f"{self.label}: prediction_type {prediction_type!r} is not supported; "
                f"use one of {', '.join(self._prediction_types)}"
            )
        if cfg.get("timestep_spacing") not in _SPACINGS:
            raise ValueError(
                f"timestep_spacing {cfg.get('timestep_spacing')!r} is not supported; use one of {', '.join(_SPACINGS)}"
            )
        self.config = cfg
        self.prediction_type: str = prediction_type
        self.num_train_timesteps: int = int(cfg["num_train_timesteps"])
        self.timestep_spacing: str = cfg["timestep_spacing"]
        self.steps_offset: int = int(cfg["steps_offset"] or 0)
        betas = _betas(
            cfg["beta_schedule"],
            float(cfg["beta_start"]),
            float(cfg["beta_end"]),
            self.num_train_timesteps,
            cfg["trained_betas"],
        )
        self.alphas_cumprod: list[float] = _alphas_cumprod(betas)
        self.num_inference_steps: int | None = None
        self.timesteps: list[float] = []
        self.sigmas: list[float] | None = None
        self._steps_taken = 0

    # -- public API -------------------------------------------------------

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = num_inference_steps
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError(f"num_inference_steps must be an integer, got {n!r}")
        if not 1 <= n <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be between 1 and {self.num_train_timesteps} (the model's num_train_timesteps), got {n}"
            )
        self.num_inference_steps = n
        self._set_timesteps(n)
        self._steps_taken = 0

    def scale_model_input_factor(self, step_index: int) -> float:
        self._check_index(step_index)
        return 1.0

    def step(self, model_output: Any, step_index: int, sample: Any, ops: Ops) -> StepResult:
        self._check_index(step_index)
        if self._multistep and step_index != self._steps_taken:
            raise ValueError(
                f"{self.label} keeps history between steps: expected step {self._steps_taken}, got "
                f"{step_index}; call set_timesteps() to start over"
            )
        result = self._step(model_output, step_index, sample, ops)
        self._steps_taken = step_index + 1
        return result

    # -- for subclasses ---------------------------------------------------

    def _set_timesteps(self, n: int) -> None:
        raise NotImplementedError

    def _step(self, model_output: Any, i: int, sample: Any, ops: Ops) -> StepResult:
        raise NotImplementedError

    def _check_index(self, step_index: int) -> None:
        if not self.timesteps:
            raise RuntimeError(f"{self.label}: call set_timesteps() before stepping")
        if not 0 <= step_index < len(self.timesteps):
            raise ValueError(f"step_index {step_index} is outside 0..{len(self.timesteps) - 1}")

    def _spaced_timesteps(self, n: int) -> list[float]:
        """The Euler/LMS/DDIM recipe for picking n of the training timesteps, noisiest first."""
        train = self.num_train_timesteps
        if self.timestep_spacing == "linspace":
            return _np_linspace(0, train - 1, n)[::-1]
        if self.timestep_spacing == "leading":
            ratio = train // n
            return [float(i * ratio + self.steps_offset) for i in range(n)][::-1]
        return [float(round(t) - 1) for t in _np_arange(train, 0, -train / n)]

    def _check_indices(self, timesteps: list[float]) -> None:
        bad = [t for t in timesteps if not 0 <= t < self.num_train_timesteps]
        if bad:
            raise ValueError(
                f"{self.label}: {self.num_inference_steps} steps with {self.timestep_spacing!r} spacing and "
                f"steps_offset {self.steps_offset} gives timestep {bad[0]:g}, outside the model's "
                f"0..{self.num_train_timesteps - 1}; choose fewer steps"
            )


class _SigmaScheduler(Scheduler):
    """Euler and LMS: they integrate in sigma, with the model input scaled by 1 / sqrt(sigma^2 + 1)."""

    _defaults = {"timestep_spacing": "linspace"}

    @property
    def init_noise_sigma(self) -> float:
        if not self.sigmas:
            raise RuntimeError(f"{self.label}: call set_timesteps() first")
        top = max(self.sigmas)
        # Quirk kept from diffusers: only "leading" spacing scales by sqrt(sigma^2 + 1).
        return top if self.timestep_spacing in ("linspace", "trailing") else math.sqrt(top * top + 1.0)

    def _set_timesteps(self, n: int) -> None:
        # Float timesteps between training steps: the sigma is interpolated.
        self.timesteps = _f32_list(self._spaced_timesteps(n))
        table = _train_sigmas(self.alphas_cumprod)
        self.sigmas = _f32_list([_np_interp(t, table) for t in self.timesteps]) + [0.0]

    def scale_model_input_factor(self, step_index: int) -> float:
        self._check_index(step_index)
        sigma = self.sigmas[step_index]
        return 1.0 / math.sqrt(sigma * sigma + 1.0)


class EulerScheduler(_SigmaScheduler):
    """diffusers EulerDiscreteScheduler with its default options (no churn, linear sigma interpolation)."""

    name = "euler"
    label = "Euler"
    _restricted = {
        "interpolation_type": ("linear", ("linear",)),
        "use_karras_sigmas": (False, _OFF),
        "use_exponential_sigmas": (False, _OFF),
        "use_beta_sigmas": (False, _OFF),
        "timestep_type": ("discrete", ("discrete",)),
        "rescale_betas_zero_snr": (False, _OFF),
        "final_sigmas_type": ("zero", ("zero",)),
    }

    def _step(self, model_output, i, sample, ops):
        # Karras et al. 2022 (EDM), Algorithm 2 without churn (one Euler step of the probability-flow ODE):
        #   d_i = (x_i - D(x_i)) / sigma_i,   x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * d_i
        # with the denoiser D(x_i) = pred_original_sample (k-diffusion's sample = x0 + sigma * noise).
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x0_on_sample, x0_on_output = _k_x0(self.prediction_type, sigma)
        pred_original_sample = _combine(ops, [(x0_on_sample, sample), (x0_on_output, model_output)])
        dt = sigma_next - sigma
        # derivative = (sample - pred_original_sample) / sigma;  prev_sample = sample + derivative * dt
        prev_sample = _combine(
            ops, [(1.0 + dt * (1.0 - x0_on_sample) / sigma, sample), (-dt * x0_on_output / sigma, model_output)]
        )
        coeffs = {"timestep": self.timesteps[i], "sigma": sigma, "sigma_next": sigma_next, "dt": dt}
        return StepResult(prev_sample, pred_original_sample, coeffs)


class DDIMScheduler(Scheduler):
    """diffusers DDIMScheduler with eta = 0 (deterministic)."""

    name = "ddim"
    label = "DDIM"
    _defaults = {"timestep_spacing": "leading", "set_alpha_to_one": True}
    _restricted = {
        "clip_sample": (True, (False,)),
        "thresholding": (False, _OFF),
        "rescale_betas_zero_snr": (False, _OFF),
    }

    def __init__(self, config=None, prediction_type=None):
        super().__init__(config, prediction_type)
        # The "previous" of the last step: the clean image, or the first training step.
        self.final_alpha_cumprod = 1.0 if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]

    def _set_timesteps(self, n: int) -> None:
        spaced = self._spaced_timesteps(n)
        if self.timestep_spacing == "linspace":
            spaced = [float(round(t)) for t in spaced]
        if self.timestep_spacing == "trailing" and len(spaced) > n:
            # numpy's arange gave a spurious final timestep -1, which diffusers
            # would look up as alphas_cumprod[-1] (wrapping to the noisiest step).
            spaced = spaced[:n]
        self._check_indices(spaced)
        self.timesteps = spaced

    def _step(self, model_output, i, sample, ops):
        # Song et al. 2021 (DDIM), eq. 12 with eta = 0 (sigma_t = 0, no noise added):
        #   x_{t-1} = sqrt(alpha_prod_t_prev) * pred_original_sample + sqrt(1 - alpha_prod_t_prev) * pred_epsilon
        #   pred_original_sample = (x_t - sqrt(1 - alpha_prod_t) * pred_epsilon) / sqrt(alpha_prod_t)  ("predicted x0")
        t = int(self.timesteps[i])
        # diffusers steps by a fixed stride, whatever the spacing.
        prev_timestep = t - self.num_train_timesteps // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        sqrt_alpha_prod_t, sqrt_beta_prod_t = math.sqrt(alpha_prod_t), math.sqrt(1.0 - alpha_prod_t)
        # x0 and epsilon as linear combinations of the sample and the model output (any prediction type)
        x0_on_sample, x0_on_output = _vp_x0(self.prediction_type, sqrt_alpha_prod_t, sqrt_beta_prod_t)
        eps_on_sample, eps_on_output = _vp_eps(self.prediction_type, sqrt_alpha_prod_t, sqrt_beta_prod_t)
        pred_original_sample = _combine(ops, [(x0_on_sample, sample), (x0_on_output, model_output)])
        # eq. 12: sqrt(alpha_prod_t_prev) * x0 + sqrt(1 - alpha_prod_t_prev) * epsilon ("direction pointing to x_t")
        sqrt_alpha_prod_t_prev, sqrt_beta_prod_t_prev = math.sqrt(alpha_prod_t_prev), math.sqrt(1.0 - alpha_prod_t_prev)
        prev_sample = _combine(
            ops,
            [
                (sqrt_alpha_prod_t_prev * x0_on_sample + sqrt_beta_prod_t_prev * eps_on_sample, sample),
                (sqrt_alpha_prod_t_prev * x0_on_output + sqrt_beta_prod_t_prev * eps_on_output, model_output),
            ],
        )
        coeffs = {
            "timestep": float(t),
            "prev_timestep": float(prev_timestep),
            "alpha_prod_t": alpha_prod_t,
            "alpha_prod_t_prev": alpha_prod_t_prev,
        }
        return StepResult(prev_sample, pred_original_sample, coeffs)


class DPMSolverPP2MScheduler(Scheduler):
    """diffusers DPMSolverMultistepScheduler: algorithm_type "dpmsolver++", solver_order 2, midpoint."""

    name = "dpmpp_2m"
    label = "DPM++ 2M"
    _multistep = True
    _defaults = {"timestep_spacing": "linspace"}
    _restricted = {
        # diffusers maps the UniPC/DEIS solver types to midpoint.
        "solver_type": ("midpoint", ("midpoint", "logrho", "bh1", "bh2")),
        "use_karras_sigmas": (False, _OFF),
        "use_exponential_sigmas": (False, _OFF),
        "use_beta_sigmas": (False, _OFF),
        "use_lu_lambdas": (False, _OFF),
        "use_flow_sigmas": (False, _OFF),
        "final_sigmas_type": ("zero", ("zero",)),
        "lambda_min_clipped": (-math.inf, (-math.inf,)),
        "variance_type": (None, (None,)),
        "thresholding": (False, _OFF),
        "rescale_betas_zero_snr": (False, _OFF),
    }

    def _set_timesteps(self, n: int) -> None:
        train, offset = self.num_train_timesteps, self.steps_offset
        # n + 1 points with the last (t = 0) dropped: unlike Euler's recipe.
        if self.timestep_spacing == "linspace":
            timesteps = [float(round(t)) for t in _np_linspace(0, train - 1, n + 1)][::-1][:-1]
        elif self.timestep_spacing == "leading":
            ratio = train // (n + 1)
            timesteps = [float(i * ratio + offset) for i in range(n + 1)][::-1][:-1]
        else:
            timesteps = [float(round(t) - 1) for t in _np_arange(train, 0, -train / n)]
        table = _train_sigmas(self.alphas_cumprod)
        # Looked up with numpy.interp, which clamps the stray t = -1 of "trailing".
        sigmas = _f32_list([_np_interp(t, table) for t in timesteps]) + [0.0]
        if len(set(sigmas)) < len(sigmas):
            raise ValueError(
                f"{self.label}: {n} steps with {self.timestep_spacing!r} spacing repeats a noise level, "
                "which the multistep solver divides by; choose fewer steps"
            )
        self.timesteps, self.sigmas = timesteps, sigmas
        self._prev_x0 = None

    def _step(self, model_output, i, sample, ops):
        # Lu et al. 2022 (DPM-Solver++), Algorithm 2, DPM-Solver++(2M), from s (this step) to t (the next):
        #   x_t = (sigma_t / sigma_s) * x_s - alpha_t * (exp(-h) - 1) * D,   h = lambda_t - lambda_s, lambda = log(alpha / sigma)
        #   D = x0_s (first order) or (1 + 1 / (2 r0)) * x0_s - 1 / (2 r0) * x0_prev,  r0 = h_prev / h (second order)
        # sigma here is k-diffusion's (sample / sqrt(alpha_prod) = x0 + sigma * noise); alpha_s, sigma_s are the VP ones.
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        alpha_s = 1.0 / math.sqrt(sigma * sigma + 1.0)
        sigma_s = sigma * alpha_s
        x0_on_sample, x0_on_output = _vp_x0(self.prediction_type, alpha_s, sigma_s)
        x0 = _combine(ops, [(x0_on_sample, sample), (x0_on_output, model_output)])  # data prediction x0_s
        coeffs = {
            "timestep": self.timesteps[i],
            "sigma": sigma,
            "sigma_next": sigma_next,
            "alpha_t": alpha_s,
            "sigma_t": sigma_s,
            "lambda": -math.log(sigma),
        }
        if sigma_next == 0.0:
            # The last step (diffusers makes it first order): lambda_next = +inf,
            # so the update lands exactly on the x0 prediction.
            prev = _combine(ops, [(1.0, x0)])
            coeffs["order"] = 1.0
        else:
            alpha_t = 1.0 / math.sqrt(sigma_next * sigma_next + 1.0)
            sigma_t = sigma_next * alpha_t
            h = math.log(sigma / sigma_next)  # lambda_t - lambda_s, lambda = log(alpha / sigma)
            phi = alpha_t * math.expm1(-h)  # alpha_t * (exp(-h) - 1)
            if self._prev_x0 is None:
                # First order (the first step): DDIM in the data-prediction form.
                terms = [(sigma_t / sigma_s, sample), (-phi, x0)]
                coeffs["order"] = 1.0
            else:
                # Second order: D1 = (x0 - x0_prev) / r0, prev -= 0.5 * phi * D1 (diffusers' midpoint form).
                r0 = math.log(self.sigmas[i - 1] / sigma) / h
                terms = [(sigma_t / sigma_s, sample), (-phi - 0.5 * phi / r0, x0), (0.5 * phi / r0, self._prev_x0)]
                coeffs.update(order=2.0, r0=r0)
            prev = _combine(ops, terms)
            coeffs["h"] = h
        self._prev_x0 = x0
        return StepResult(prev, x0, coeffs)


class PNDMScheduler(Scheduler):
    """diffusers PNDMScheduler: pseudo linear multistep (PLMS), after Runge-Kutta warm-up steps
    unless skip_prk_steps (Stable Diffusion's configs skip them)."""

    name = "pndm"
    label = "PNDM"
    _multistep = True
    _defaults = {"timestep_spacing": "leading", "set_alpha_to_one": False, "skip_prk_steps": False}
    _prediction_types = ("epsilon", "v_prediction")

    def __init__(self, config=None, prediction_type=None):
        super().__init__(config, prediction_type)
        self.skip_prk_steps = bool(self.config["skip_prk_steps"])
        self.final_alpha_cumprod = 1.0 if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self._num_prk = 0

    def _set_timesteps(self, n: int) -> None:
        train = self.num_train_timesteps
        # Ascending, unlike the other recipes.
        if self.timestep_spacing == "linspace":
            base = [round(t) for t in _np_linspace(0, train - 1, n)]
        elif self.timestep_spacing == "leading":
            base = [i * (train // n) + self.steps_offset for i in range(n)]
        else:
            base = [round(t) - 1 for t in _np_arange(train, 0, -train / n)][::-1]
            # Drop numpy's spurious -1 (diffusers would read alphas_cumprod[-1]).
            base = base[len(base) - n :]
        if self.skip_prk_steps:
            # The second-to-last timestep twice: step 1 redoes step 0 with a
            # better (averaged) noise estimate.
            prk, plms = [], (base[:-1] + base[-2:-1] + base[-1:])[::-1]
        else:
            if n < 4:
                # diffusers fails too (a numpy broadcasting error).
                raise ValueError(f"{self.label} with skip_prk_steps=False needs at least 4 steps, got {n}")
            half = train // n // 2
            prk = [t + d for t in base[-4:] for d in (0, half)][:-1]
            prk = [t for t in prk for _ in range(2)][1:-1][::-1]
            plms = base[:-3][::-1]
        self._check_indices(prk + plms)
        self._num_prk = len(prk)
        self._prk_timesteps = prk
        self.timesteps = [float(t) for t in prk + plms]
        self._ets: list[Any] = []  # past model outputs, oldest first
        self._cur_sample = None
        self._prk_outputs: list[Any] = []

    def _prev_sample_terms(self, sample, t, prev_t, weighted_outputs):
        """diffusers' _get_prev_sample, with model_output = sum(w * output): the transfer part of
        Liu et al. 2022 (PNDM), eq. 9 (a DDIM step from t to prev_t with the given noise estimate):
          x_prev = sqrt(alpha_prod_t_prev / alpha_prod_t) * x_t
                   - (alpha_prod_t_prev - alpha_prod_t) / (alpha_prod_t * sqrt(beta_prod_t_prev)
                     + sqrt(alpha_prod_t * beta_prod_t * alpha_prod_t_prev)) * epsilon"""
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t, beta_prod_t_prev = 1.0 - alpha_prod_t, 1.0 - alpha_prod_t_prev
        sample_coeff = math.sqrt(alpha_prod_t_prev / alpha_prod_t)
        model_output_denom_coeff = alpha_prod_t * math.sqrt(beta_prod_t_prev) + math.sqrt(
            alpha_prod_t * beta_prod_t * alpha_prod_t_prev
        )
        epsilon_coeff = (alpha_prod_t_prev - alpha_prod_t) / model_output_denom_coeff
        # prev = sample_coeff * sample - epsilon_coeff * epsilon, epsilon = eps_on_sample * sample + eps_on_output * model_output
        eps_on_sample, eps_on_output = _vp_eps(self.prediction_type, math.sqrt(alpha_prod_t), math.sqrt(beta_prod_t))
        terms = [(sample_coeff - epsilon_coeff * eps_on_sample, sample)] + [
            (-epsilon_coeff * eps_on_output * w, x) for w, x in weighted_outputs
        ]
        coeffs = {
            "timestep": float(t),
            "prev_timestep": float(prev_t),
            "alpha_prod_t": alpha_prod_t,
            "alpha_prod_t_prev": alpha_prod_t_prev,
        }
        return terms, coeffs

    def _step(self, model_output, i, sample, ops):
        # Shown x0: what this model output says about this sample at this timestep.
        alpha_prod_t = self.alphas_cumprod[int(self.timesteps[i])]
        x0_on_sample, x0_on_output = _vp_x0(self.prediction_type, math.sqrt(alpha_prod_t), math.sqrt(1.0 - alpha_prod_t))
        pred_original_sample = _combine(ops, [(x0_on_sample, sample), (x0_on_output, model_output)])
        if i < self._num_prk:
            terms, coeffs = self._prk_step(model_output, i, sample, ops)
        else:
            terms, coeffs = self._plms_step(model_output, i, sample, ops)
        return StepResult(_combine(ops, terms), pred_original_sample, coeffs)

    def _prk_step(self, model_output, i, sample, ops):
        """One of the four Runge-Kutta stages (diffusers' step_prk; Liu et al. 2022, the PRK warm-up):
        e' = (e_1 + 2 e_2 + 2 e_3 + e_4) / 6 on the fourth stage."""
        stride = self.num_train_timesteps // self.num_inference_steps
        prev_t = int(self.timesteps[i]) - (0 if i % 2 else stride // 2)
        t = self._prk_timesteps[i // 4 * 4]
        stage = i % 4
        mine = _keep(ops, model_output)
        if stage == 0:
            self._ets.append(mine)
            self._cur_sample = _keep(ops, sample)
            self._prk_outputs = [mine]
            weighted = [(1.0, mine)]
        elif stage < 3:
            self._prk_outputs.append(mine)
            weighted = [(1.0, mine)]
        else:
            e0, e1, e2 = self._prk_outputs
            weighted = [(1 / 6, e0), (1 / 3, e1), (1 / 3, e2), (1 / 6, mine)]
            self._prk_outputs = []
        terms, coeffs = self._prev_sample_terms(self._cur_sample, t, prev_t, weighted)
        coeffs.update(stage=float(stage), order=4.0)
        return terms, coeffs

    def _plms_step(self, model_output, i, sample, ops):
        """Pseudo linear multistep, PLMS (diffusers' step_plms; Liu et al. 2022): the noise estimate is
        the Adams-Bashforth combination of the last four, e' = (55 e_t - 59 e_{t-1} + 37 e_{t-2} - 9 e_{t-3}) / 24,
        with the lower orders while the history fills (1st, 2nd: (3 e_t - e_{t-1}) / 2, 3rd: (23, -16, 5) / 12);
        then the transfer of eq. 9 (_prev_sample_terms)."""
        counter = i
        stride = self.num_train_timesteps // self.num_inference_steps
        t = int(self.timesteps[i])
        prev_t = t - stride
        if counter != 1:
            self._ets = self._ets[-3:] + [_keep(ops, model_output)]
        else:
            prev_t, t = t, t + stride
        ets = self._ets
        if len(ets) == 1 and counter == 0:
            self._cur_sample = _keep(ops, sample)
            weighted = [(1.0, ets[-1])]
        elif len(ets) == 1 and counter == 1:
            weighted = [(0.5, model_output), (0.5, ets[-1])]
            sample, self._cur_sample = self._cur_sample, None
        elif len(ets) == 2:
            weighted = [(1.5, ets[-1]), (-0.5, ets[-2])]
        elif len(ets) == 3:
            weighted = [(23 / 12, ets[-1]), (-16 / 12, ets[-2]), (5 / 12, ets[-3])]
        else:
            weighted = [(55 / 24, ets[-1]), (-59 / 24, ets[-2]), (37 / 24, ets[-3]), (-9 / 24, ets[-4])]
        terms, coeffs = self._prev_sample_terms(sample, t, prev_t, weighted)
        coeffs["order"] = float(len(weighted) if counter != 1 else 2)
        return terms, coeffs


def _lagrange_integral(nodes: list[float], j: int, lo: float, hi: float) -> float:
    """Integral over [lo, hi] of the Lagrange basis polynomial of nodes[j].

    The polynomial has degree len(nodes) - 1 <= 3, so two-point Gauss-Legendre
    quadrature is exact (diffusers uses scipy.integrate.quad to the same end).
    """

    def basis(tau: float) -> float:
        prod = 1.0
        for k, node in enumerate(nodes):
            if k != j:
                prod *= (tau - node) / (nodes[j] - node)
        return prod

    assert len(nodes) <= 4
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    offset = half / math.sqrt(3.0)
    return half * (basis(mid - offset) + basis(mid + offset))


class LMSScheduler(_SigmaScheduler):
    """diffusers LMSDiscreteScheduler: linear multistep of order 4 in sigma."""

    name = "lms"
    label = "LMS"
    _multistep = True
    order = 4
    _restricted = {
        "use_karras_sigmas": (False, _OFF),
        "use_exponential_sigmas": (False, _OFF),
        "use_beta_sigmas": (False, _OFF),
    }

    def _set_timesteps(self, n: int) -> None:
        super()._set_timesteps(n)
        if len(set(self.sigmas)) < len(self.sigmas):
            raise ValueError(
                f"{self.label}: {n} steps with {self.timestep_spacing!r} spacing repeats a noise level, "
                "which the Lagrange interpolation divides by; choose fewer steps"
            )
        self._derivatives: list[Any] = []  # oldest first

    def _step(self, model_output, i, sample, ops):
        # Linear multistep in sigma (k-diffusion's sample_lms, as diffusers' LMSDiscreteScheduler):
        #   x_{i+1} = x_i + sum_j c_j * d_{i-j},   c_j = integral from sigma_i to sigma_{i+1} of the Lagrange basis of sigma_{i-j}
        # over the last `order` derivatives d = (x - pred_original_sample) / sigma (Karras et al. 2022, eq. 3's ODE).
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x0_on_sample, x0_on_output = _k_x0(self.prediction_type, sigma)
        pred_original_sample = _combine(ops, [(x0_on_sample, sample), (x0_on_output, model_output)])
        derivative = _combine(ops, [((1.0 - x0_on_sample) / sigma, sample), (-x0_on_output / sigma, model_output)])
        self._derivatives = (self._derivatives + [derivative])[-self.order :]
        order = min(i + 1, self.order)
        nodes = [self.sigmas[i - k] for k in range(order)]  # newest first
        lms_coeffs = [_lagrange_integral(nodes, j, sigma, sigma_next) for j in range(order)]
        newest_first = self._derivatives[::-1]
        prev_sample = _combine(ops, [(1.0, sample)] + [(c, d) for c, d in zip(lms_coeffs, newest_first)])
        coeffs = {"timestep": self.timesteps[i], "sigma": sigma, "sigma_next": sigma_next, "order": float(order)}
        coeffs.update({f"lms_coeff_{j}": c for j, c in enumerate(lms_coeffs)})
        return StepResult(prev_sample, pred_original_sample, coeffs)


SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (EulerScheduler, DDIMScheduler, DPMSolverPP2MScheduler, PNDMScheduler, LMSScheduler)
}
SCHEDULER_LABELS: dict[str, str] = {name: cls.label for name, cls in SCHEDULERS.items()}


def make_scheduler(name: str, config: dict | None, prediction_type: str | None = None) -> Scheduler:
    """Build the named sampler for a model whose diffusers scheduler config is `config`."""
    try:
        cls = SCHEDULERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown scheduler {name!r}; supported: {', '.join(SCHEDULERS)}") from None
    return cls(config, prediction_type)

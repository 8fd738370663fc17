"""runtime.schedulers must reproduce diffusers' schedulers step for step.

Both sides run the same denoising loop on the same starting noise with a fake,
deterministic "model" whose output depends on its input and timestep, so any
difference in the multistep history shows up. diffusers runs on torch float32
tensors; our scheduler runs through a numpy float32 implementation of Ops.
"""

import math
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.schedulers import (  # noqa: E402
    SCHEDULER_LABELS,
    SCHEDULERS,
    Scheduler,
    StepResult,
    make_scheduler,
)

diffusers.utils.logging.set_verbosity_error()
# diffusers calls np.array() on torch tensors, which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# runwayml/stable-diffusion-v1-5's scheduler_config.json (a PNDMScheduler config).
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
CONFIGS = {
    "sd15": SD15,
    "trailing": {**SD15, "timestep_spacing": "trailing"},
    "linspace": {**SD15, "timestep_spacing": "linspace"},
    "cosine": {**SD15, "beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "leading", "steps_offset": 0},
    "linear_prk": {**SD15, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "skip_prk_steps": False},
}
REFERENCE = {
    "euler": diffusers.EulerDiscreteScheduler,
    "ddim": diffusers.DDIMScheduler,
    "dpmpp_2m": diffusers.DPMSolverMultistepScheduler,
    "pndm": diffusers.PNDMScheduler,
    "lms": diffusers.LMSDiscreteScheduler,
}
STEPS = (1, 2, 10, 25, 50)
PREDICTIONS = ("epsilon", "v_prediction")
SHAPE = (1, 4, 8, 8)
# Allowed difference, relative to the largest magnitude in play at that step
# (at least 1). Early latents reach |x| ~ 50, where one float32 ulp is 4e-6,
# and diffusers itself loses that much to cancellation in float32 (e.g. Euler's
# sample + (sample - x0) / sigma * dt), so a pure 1e-5 absolute bound would
# test torch's rounding rather than the scheduler. Observed: below 5e-6.
TOL = 1e-5


LINCOMB_TERMS = 8  # export/opgraphs.py writes this limit into every manifest


class NumpyOps:
    """Ops as the ONNX backend computes it: float32 multiply-adds."""

    def __init__(self):
        self.calls = 0

    def lincomb(self, terms):
        # every update fits one call of the exported lincomb graph (the manifest's terms limit)
        assert 1 <= len(terms) <= LINCOMB_TERMS, f"lincomb got {len(terms)} terms"
        assert all(isinstance(c, float) and math.isfinite(c) for c, _ in terms), terms
        assert len({x.shape for _, x in terms}) == 1
        self.calls += 1
        out = np.zeros(terms[0][1].shape, dtype=np.float32)
        for c, x in terms:
            out += np.float32(c) * x
        return out


_WEIGHTS = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)


def fake_model(x_in, t):
    """Deterministic stand-in for the UNet: nonlinear in its input, varies with t."""
    x_in = np.asarray(x_in, dtype=np.float32)
    scale = np.float32(0.6 + float(t) / 2000)
    return (np.tanh(np.float32(0.5) * x_in + _WEIGHTS) * scale).astype(np.float32)


def start_noise():
    return np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)


def max_err(ours, ref):
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(ours, dtype=np.float64) - ref)))


def reference_x0(ref, name, out, x, t, prediction_type):
    """The reference's x0: diffusers returns it, except DPM (kept in model_outputs) and PNDM (none)."""
    if name == "dpmpp_2m":
        return ref.model_outputs[-1].numpy()
    # PNDM: the x0 that this output implies for this sample at this timestep.
    alpha_prod = float(ref.alphas_cumprod[int(t)])
    x, out = x.astype(np.float64), out.astype(np.float64)
    if prediction_type == "epsilon":
        return (x - math.sqrt(1 - alpha_prod) * out) / math.sqrt(alpha_prod)
    return math.sqrt(alpha_prod) * x - math.sqrt(1 - alpha_prod) * out


def run_both(name, config, prediction_type, steps):
    ref = REFERENCE[name].from_config(config, prediction_type=prediction_type)
    ours = make_scheduler(name, config, prediction_type)
    ref.set_timesteps(steps)
    ours.set_timesteps(steps)

    assert ours.timesteps == [float(t) for t in ref.timesteps.tolist()]
    assert all(isinstance(t, float) for t in ours.timesteps)
    if name in ("euler", "lms", "dpmpp_2m"):
        ref_sigmas = ref.sigmas.tolist()
        assert len(ours.sigmas) == len(ref_sigmas)
        for a, b in zip(ours.sigmas, ref_sigmas):
            assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    else:
        assert ours.sigmas is None
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)

    noise = start_noise()
    x_ref = torch.from_numpy(noise) * ref.init_noise_sigma
    x = (noise * np.float32(ours.init_noise_sigma)).astype(np.float32)
    ops = NumpyOps()
    worst = {}
    for i, t in enumerate(ref.timesteps):
        x_in_ref = ref.scale_model_input(x_ref, t)
        x_in = ops.lincomb([(ours.scale_model_input_factor(i), x)])
        out_ref = fake_model(x_in_ref.numpy(), t)
        out = fake_model(x_in, ours.timesteps[i])

        res_ref = ref.step(torch.from_numpy(out_ref), t, x_ref)
        res = ours.step(out, i, x, ops)
        assert isinstance(res, StepResult)
        assert all(isinstance(v, float) for v in res.coefficients.values())

        x0_ref = getattr(res_ref, "pred_original_sample", None)
        if x0_ref is None:
            x0_ref = reference_x0(ref, name, out_ref, x_ref.numpy(), t, prediction_type)
        else:
            x0_ref = x0_ref.numpy()
        scale = max(1.0, *(float(np.max(np.abs(v))) for v in (x_ref.numpy(), x0_ref, res_ref.prev_sample.numpy())))
        x_ref, x = res_ref.prev_sample, res.prev_sample
        for what, a, b in (
            ("x_in", x_in, x_in_ref.numpy()),
            ("x0", res.pred_original_sample, x0_ref),
            ("prev", x, x_ref.numpy()),
        ):
            err = max_err(a, b)
            worst[what] = max(worst.get(what, 0.0), err / scale)
            assert err <= TOL * scale, f"step {i} (t={float(t)}): {what} differs by {err:.3g} (scale {scale:.3g})"
    return worst


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("name", list(REFERENCE))
def test_matches_diffusers_sd15(name, prediction_type, steps):
    run_both(name, SD15, prediction_type, steps)


@pytest.mark.parametrize("steps", (1, 10, 25))
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("name", list(REFERENCE))
@pytest.mark.parametrize("config", ("trailing", "linspace"))
def test_matches_diffusers_spacings(config, name, prediction_type, steps):
    run_both(name, CONFIGS[config], prediction_type, steps)


@pytest.mark.parametrize("steps", (2, 50))
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("name", list(REFERENCE))
def test_matches_diffusers_cosine_betas(name, prediction_type, steps):
    run_both(name, CONFIGS["cosine"], prediction_type, steps)


@pytest.mark.parametrize("steps", (4, 10, 25, 50))
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_pndm_with_runge_kutta_warmup(prediction_type, steps):
    run_both("pndm", CONFIGS["linear_prk"], prediction_type, steps)


@pytest.mark.parametrize("name", ["euler", "ddim", "dpmpp_2m", "lms"])
def test_sample_prediction(name):
    run_both(name, SD15, "sample", 10)


def test_trained_betas():
    config = {**SD15, "trained_betas": [float(b) for b in np.linspace(0.0002, 0.03, 1000)]}
    for name in ("euler", "ddim"):
        run_both(name, config, "epsilon", 10)


def test_lms_coefficients_match_scipy_quadrature():
    ref = REFERENCE["lms"].from_config(SD15)
    ref.set_timesteps(10)
    ours = make_scheduler("lms", SD15)
    ours.set_timesteps(10)
    x, ops = start_noise(), NumpyOps()
    for i, t in enumerate(ours.timesteps):
        res = ours.step(fake_model(x, t), i, x, ops)
        x = res.prev_sample
        order = min(i + 1, 4)
        for j in range(order):
            expected = ref.get_lms_coefficient(order, i, j)
            assert res.coefficients[f"lms_coeff_{j}"] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_trailing_numpy_arange_quirk():
    """numpy's arange(1000, 0, -1000/61) has 62 elements; diffusers keeps the extra t = -1."""
    config = CONFIGS["trailing"]
    for name in ("euler", "lms", "dpmpp_2m"):
        run_both(name, config, "epsilon", 61)
    # DDIM and PNDM would read alphas_cumprod[-1] there (the noisiest step): we drop it.
    for name in ("ddim", "pndm"):
        ref = REFERENCE[name].from_config(config)
        ref.set_timesteps(61)
        ours = make_scheduler(name, config)
        ours.set_timesteps(61)
        expected = [float(t) for t in ref.timesteps.tolist()]
        assert expected[-1] == -1.0
        assert ours.timesteps == expected[:-1]


def test_prediction_type_read_from_config():
    s = make_scheduler("euler", {**SD15, "prediction_type": "v_prediction"})
    assert s.prediction_type == "v_prediction"
    assert make_scheduler("euler", {**SD15, "prediction_type": "v_prediction"}, "epsilon").prediction_type == "epsilon"
    assert make_scheduler("dpmpp_2m", {}).prediction_type == "epsilon"


def test_diffusers_defaults_for_missing_keys():
    # Missing keys take the diffusers class defaults: linear betas 1e-4..0.02,
    # and each class's own timestep_spacing.
    for name, cls in REFERENCE.items():
        config = {"clip_sample": False} if name == "ddim" else {}
        ref = cls.from_config(config)
        ref.set_timesteps(20)
        ours = make_scheduler(name, config)
        ours.set_timesteps(20)
        assert ours.timesteps == [float(t) for t in ref.timesteps.tolist()], name
        assert ours.alphas_cumprod == pytest.approx(ref.alphas_cumprod.tolist(), rel=1e-6)


def test_registry():
    assert set(SCHEDULERS) == {"euler", "ddim", "dpmpp_2m", "pndm", "lms"}
    for name, cls in SCHEDULERS.items():
        assert issubclass(cls, Scheduler) and cls.name == name
        assert SCHEDULER_LABELS[name] == cls.label != ""


@pytest.mark.parametrize("steps", [0, -1, 1001, 2.0, True, None])
def test_bad_step_counts(steps):
    s = make_scheduler("euler", SD15)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(steps)


def test_unknown_scheduler_lists_supported_names():
    with pytest.raises(ValueError, match="unknown scheduler 'heun'.*euler, ddim, dpmpp_2m, pndm, lms"):
        make_scheduler("heun", SD15)


@pytest.mark.parametrize("name, prediction_type", [("euler", "flow"), ("ddim", "x0"), ("pndm", "sample")])
def test_unsupported_prediction_type(name, prediction_type):
    with pytest.raises(ValueError, match="prediction_type"):
        make_scheduler(name, SD15, prediction_type)
    with pytest.raises(ValueError, match="prediction_type"):
        make_scheduler(name, {**SD15, "prediction_type": prediction_type})


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("euler", "use_karras_sigmas", True),
        ("euler", "interpolation_type", "log_linear"),
        ("dpmpp_2m", "final_sigmas_type", "sigma_min"),
        ("lms", "use_karras_sigmas", True),
        ("ddim", "clip_sample", True),
        ("ddim", "rescale_betas_zero_snr", True),
        ("euler", "timestep_spacing", "random"),
        ("euler", "beta_schedule", "sigmoid"),
    ],
)
def test_unsupported_config_values(name, key, value):
    with pytest.raises(ValueError, match=key):
        make_scheduler(name, {**SD15, key: value})


def test_ddim_clip_sample_defaults_to_true_like_diffusers():
    with pytest.raises(ValueError, match="clip_sample"):
        make_scheduler("ddim", {k: v for k, v in SD15.items() if k != "clip_sample"})


def test_repeated_noise_levels_are_refused():
    # 769 "trailing" steps end with t = 0 and the stray t = -1, both at sigma_min.
    for name in ("dpmpp_2m", "lms"):
        s = make_scheduler(name, CONFIGS["trailing"])
        with pytest.raises(ValueError, match="repeats a noise level"):
            s.set_timesteps(769)


def test_pndm_warmup_needs_four_steps():
    s = make_scheduler("pndm", CONFIGS["linear_prk"])
    with pytest.raises(ValueError, match="at least 4 steps"):
        s.set_timesteps(3)


def test_leading_offset_past_last_training_step():
    # 1000 "leading" steps with steps_offset 1 reach t = 1000: diffusers' DDIM would IndexError.
    s = make_scheduler("ddim", SD15)
    with pytest.raises(ValueError, match="outside the model's 0..999"):
        s.set_timesteps(1000)


def test_step_order_and_state():
    s = make_scheduler("dpmpp_2m", SD15)
    ops = NumpyOps()
    x = start_noise()
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, 0, x, ops)
    s.set_timesteps(5)
    s.step(fake_model(x, s.timesteps[0]), 0, x, ops)
    with pytest.raises(ValueError, match="expected step 1"):
        s.step(x, 2, x, ops)
    with pytest.raises(ValueError, match="outside"):
        s.scale_model_input_factor(5)
    # set_timesteps starts over: two full runs give identical results.
    s.set_timesteps(5)
    run1 = [s.step(fake_model(x, t), i, x, ops).prev_sample for i, t in enumerate(s.timesteps)]
    s.set_timesteps(5)
    run2 = [s.step(fake_model(x, t), i, x, ops).prev_sample for i, t in enumerate(s.timesteps)]
    assert all(np.array_equal(a, b) for a, b in zip(run1, run2))

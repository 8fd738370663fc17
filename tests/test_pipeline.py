"""The whole loop: our runtime on the exported bundle vs diffusers' StableDiffusionPipeline."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from runtime.bundle import Bundle  # noqa: E402
from runtime.native import NativeBackend, to_numpy  # noqa: E402
from runtime.pipeline import Pipeline, Request, run_sync  # noqa: E402

DIFFUSERS_SCHEDULERS = {
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
}
PROMPT, NEGATIVE = "a small cat at the top left on a blue background", "blurry, dark"


@pytest.fixture(scope="module")
def ours(tiny_bundle):
    pipe = Pipeline(Bundle.from_dir(tiny_bundle), NativeBackend(tiny_bundle))
    run_sync(pipe.load())
    return pipe


@pytest.fixture(scope="module")
def reference(tiny_pipeline_dir):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_reference(ref, scheduler, prompt, negative, guidance, steps, latents):
    ref.scheduler = getattr(diffusers, DIFFUSERS_SCHEDULERS[scheduler]).from_config(ref.scheduler.config)
    out = ref(
        prompt,
        negative_prompt=negative if guidance > 1 else None,
        guidance_scale=guidance,
        num_inference_steps=steps,
        latents=torch.from_numpy(latents.copy()),
        output_type="np",
    )
    return out.images[0]


def decode_float(pipe, latent):
    """The bundle's VAE on the final latent, to compare in float before our uint8 rounding."""
    be = pipe.backend
    z = to_numpy(latent) / pipe.bundle.model["vae_scaling_factor"]
    img = run_sync(be.run("vae_decoder", {"latent_sample": z.astype(np.float32)}))["sample"][0]
    return np.clip(img / 2 + 0.5, 0, 1).transpose(1, 2, 0)


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp_2m", "pndm", "ddim", "lms"])
@pytest.mark.parametrize("guidance", [1.0, 3.0, 7.5])
def test_matches_diffusers(ours, reference, scheduler, guidance):
    req = Request(PROMPT, NEGATIVE, seed=3, guidance=guidance, steps=10, scheduler=scheduler)
    trace = run_sync(ours.generate(req))
    noise = to_numpy(ours.initial_noise(3))
    want = run_reference(reference, scheduler, PROMPT, NEGATIVE, guidance, 10, noise)
    got = decode_float(ours, trace.final_latent)
    assert np.abs(got - want).max() <= 1e-3
    # the uint8 image the page shows differs from diffusers' only by rounding
    rgba = to_numpy(trace.image)
    assert np.abs(rgba[..., :3].astype(int) - (want * 255).round().astype(int)).max() <= 1
    assert len(trace.steps) == len(trace.timesteps)


@pytest.mark.parametrize("negative", ["", "blurry, dark"])
def test_guidance_zero_is_unconditional(ours, reference, negative):
    """Our scale 0 means 'negative/empty prompt only': diffusers on that prompt at scale 1."""
    trace = run_sync(ours.generate(Request(PROMPT, negative, seed=5, guidance=0.0, steps=8, scheduler="euler")))
    want = run_reference(reference, "euler", negative, None, 1.0, 8, to_numpy(ours.initial_noise(5)))
    assert np.abs(decode_float(ours, trace.final_latent) - want).max() <= 1e-3


def test_trace_has_every_stage(ours):
    steps_seen = []
    trace = run_sync(
        ours.generate(
            Request("a rocket at night", seed=1, guidance=7.5, steps=4, scheduler="dpmpp_2m"),
            on_step=lambda s: steps_seen.append(s.index),
        )
    )
    assert steps_seen == [0, 1, 2, 3]
    assert trace.tokens.tokens[0] == "<|startoftext|>" and trace.tokens.ids[0] == 49406
    assert trace.embeddings.shape == (2, 77, 32)
    s = trace.steps[-1]
    for t in (s.latent, s.noise_uncond, s.noise_cond, s.noise_guided, s.pred_x0):
        assert t.shape == (1, 4, 8, 8)
    assert s.image.shape == (16, 16, 4) and s.image.dtype == "uint8"
    assert trace.image.shape == (16, 16, 4)
    guided = to_numpy(s.noise_uncond) + 7.5 * (to_numpy(s.noise_cond) - to_numpy(s.noise_uncond))
    assert np.allclose(to_numpy(s.noise_guided), guided, atol=1e-4)
    assert trace.timings_ms["unet"] > 0


def test_cancel_keeps_partial_trace(ours):
    trace = run_sync(
        ours.generate(
            Request("a cat", steps=20, scheduler="euler"), should_stop=lambda: len(seen) >= 3, on_step=lambda s: seen.append(s)
        )
        if (seen := []) is not None
        else None
    )
    assert trace.cancelled and len(trace.steps) == 3 and trace.image is None
    # the pipeline is still usable after a stop
    assert run_sync(ours.generate(Request("a cat", steps=2))).image is not None


def test_same_seed_same_image_different_seed_different(ours):
    a = run_sync(ours.generate(Request("a cat", seed=11, steps=3)))
    b = run_sync(ours.generate(Request("a cat", seed=11, steps=3)))
    c = run_sync(ours.generate(Request("a cat", seed=12, steps=3)))
    assert a.image.data == b.image.data
    assert to_numpy(a.final_latent).tolist() != to_numpy(c.final_latent).tolist()


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("steps", 0, "steps must be"),
        ("steps", 101, "steps must be"),
        ("steps", 2.5, "steps must be"),
        ("guidance", -1, "guidance scale"),
        ("guidance", 20.5, "guidance scale"),
        ("guidance", float("nan"), "guidance scale"),
        ("seed", -1, "seed must be"),
        ("seed", 2**32, "seed must be"),
        ("scheduler", "magic", "unknown scheduler"),
        ("prompt", "x" * 5001, "at most 5000"),
        ("prompt", None, "prompt must be text"),
    ],
)
def test_bad_settings_are_refused_clearly(ours, field, value, msg):
    req = Request("a cat")
    setattr(req, field, value)
    with pytest.raises(ValueError, match=msg):
        run_sync(ours.generate(req))


def test_hostile_and_long_prompts(ours):
    long = " ".join(["cat"] * 100)
    t = run_sync(ours.generate(Request(long, steps=1)))
    assert t.tokens.truncated and len(t.tokens.dropped_words) == 25
    t = run_sync(ours.generate(Request("<img src=x onerror=alert(1)> \u0000\u202e 🐱 東京", steps=1)))
    assert t.image is not None and len(t.tokens.ids) == 77


@pytest.fixture(scope="module")
def sd2_style(tmp_path_factory):
    """SD 2.x conventions on the tiny fixture: v-prediction and a tokenizer that pads with '!'."""
    from export.exporter import export_bundle
    from export.random_pipeline import tiny

    folder = tiny(tmp_path_factory.mktemp("tiny-v") / "pipeline", seed=1, prediction_type="v_prediction", pad_token="!")
    export_bundle(folder, folder.parent / "bundle")
    pipe = Pipeline(Bundle.from_dir(folder.parent / "bundle"), NativeBackend(folder.parent / "bundle"))
    run_sync(pipe.load())
    ref = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    ref.set_progress_bar_config(disable=True)
    return pipe, ref


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp_2m", "ddim"])
def test_v_prediction_and_bang_padding_match_diffusers(sd2_style, scheduler):
    ours, ref = sd2_style
    assert ours.bundle.model["prediction_type"] == "v_prediction"
    trace = run_sync(ours.generate(Request(PROMPT, NEGATIVE, seed=2, guidance=7.5, steps=10, scheduler=scheduler)))
    assert trace.tokens.ids[-1] == 0  # '!' is id 0: SD 2.x pads with it
    want = run_reference(ref, scheduler, PROMPT, NEGATIVE, 7.5, 10, to_numpy(ours.initial_noise(2)))
    assert np.abs(decode_float(ours, trace.final_latent) - want).max() <= 1e-3

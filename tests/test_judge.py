"""The evaluation judge names what a person sees: in crisp real scenes, and in soft ones too.

It is trained on real scenes only; these tests hold the committed judge to that job on scenes it
never saw, so an evaluation table built on it means something."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
S = pytest.importorskip("train.scenes")
from train import evaluate as E  # noqa: E402
from train import models as M  # noqa: E402
from train import stages as ST  # noqa: E402


@pytest.fixture(scope="module")
def fresh():
    images, _, objs, bgs = S.build_dataset(240, seed=4242, train=False)
    single = objs.sum(1) == 1
    return images[single], objs[single].argmax(1), bgs[single]


def _scores(images, objs, bgs):
    top, bg = E.judge_images(E.load_judge(), images)
    return float((top[:, 0] == objs).mean()), float((bg == bgs).mean())


def test_augment_is_seeded_in_range_and_changes_images():
    x = M.to_tensor(S.build_dataset(8, seed=1)[0])
    a = ST._augment(x, torch.Generator().manual_seed(5))
    b = ST._augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= -1 and a.max() <= 1
    assert (a - x).abs().mean() > 0.01


def test_judge_names_fresh_real_scenes(fresh):
    obj, bg = _scores(*fresh)
    assert obj >= 0.9 and bg >= 0.95, (obj, bg)


def test_judge_tolerates_a_blurred_picture(fresh):
    from PIL import Image, ImageFilter

    images, objs, bgs = fresh
    soft = np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.0))) for im in images])
    obj, bg = _scores(soft, objs, bgs)
    assert obj >= 0.8 and bg >= 0.95, (obj, bg)


def test_only_the_scene_model_gets_an_adherence_score():
    import json
    from pathlib import Path

    about = json.loads((Path(__file__).resolve().parent.parent / "models" / "default" / "explainer.json").read_text())
    assert E.is_scene_model(about)
    assert not E.is_scene_model(None) and not E.is_scene_model({"vocabulary": {"objects": ["cat"]}})


def test_adherence_scores_a_bundle_with_the_judge(tiny_bundle):
    """A random tiny model draws nothing the judge can name: its score stays near chance (1/48)."""
    r = E.adherence(tiny_bundle, seeds=(0,), steps=2)
    assert r["prompts"] == len(S.OBJECTS) and r["seeds"] == [0]
    assert 0 <= r["object_accuracy"] < 0.25 and 0 <= r["background_accuracy"] <= 1


def test_evaluate_knows_every_runtime_scheduler():
    import diffusers

    from runtime.schedulers import SCHEDULERS

    assert set(E.SCHEDULERS) == set(SCHEDULERS)
    assert all(hasattr(diffusers, cls) for cls in E.SCHEDULERS.values())


def test_the_judge_names_the_committed_vaes_reconstructions():
    """Every generated image passes through the VAE decoder, so its reconstructions bound the whole
    model's score. The first VAE (undertrained) let the judge name only 85% of real objects; with the
    fine-tuned decoder it names 97% (n=1000), and this keeps that gain from silently slipping away."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(Path(__file__).resolve().parent.parent / "models" / "default" / "vae").eval()
    r = E.reconstruction_ceiling(vae, E.load_judge(), n=300)
    assert r["scenes"] > 150
    assert r["objects"] >= 0.93 and r["background"] >= 0.95, r


def test_the_vae_cannot_give_back_the_doughnut_on_orange():
    """Per held-out prompt, the judge on the VAE's reconstructions of real renders: where it fails on most,
    no UNet can succeed (the evaluation says so beside each prompt under half). The doughnut on orange
    comes back with green icing (judge: a clover), the pig on pink comes back a pig."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(Path(__file__).resolve().parent.parent / "models" / "default" / "vae").eval()
    held = [h for h in S.held_out_prompts() if h[0] in ("a doughnut on an orange background", "a pig on a pink background")]
    real = E.through_vae(vae, np.zeros((2, 3, 64, 64, 3), np.uint8) + 200)
    assert real.shape == (2, 3, 64, 64, 3) and real.dtype == np.uint8 and abs(int(real.mean()) - 200) < 8
    rate = {p["prompt"]: p["right"] for p in E.judge_on_real_renders(E.load_judge(), held, n=8, vae=vae)["per_prompt"]}
    assert rate["a doughnut on an orange background"] < 0.5 <= rate["a pig on a pink background"], rate


def test_the_decoder_can_draw_the_doughnut_on_orange_from_a_better_latent():
    """What the evaluation says beside a prompt the VAE gives back wrong: the judge on the decoder's drawings from
    latents fitted to the renders. For the doughnut on orange a latent exists that the decoder draws as a doughnut,
    so its failure is the encoder's mapping (the one a UNet learns), not the latent's capacity (measured 2026-12-06)."""
    from diffusers import AutoencoderKL

    from train import metrics as X

    vae = AutoencoderKL.from_pretrained(Path(__file__).resolve().parent.parent / "models" / "default" / "vae").eval()
    held = [h for h in S.held_out_prompts() if h[0] == "a doughnut on an orange background"]
    real = X.real_scenes(held, 8, seed=505)[:, :2]
    best = E.best_latents(vae, real)
    assert best.shape == real.shape and best.dtype == np.uint8
    err = lambda a: np.abs(a.astype(int) - real.astype(int)).mean()  # noqa: E731
    assert err(best) < err(E.through_vae(vae, real))
    assert any(p.requires_grad for p in vae.parameters())  # the model is left as it was given
    r = E.judge_on_real_renders(E.load_judge(), held, n=8, vae=vae, best=True)["per_prompt"][0]
    assert r["right"] >= 0.5, r

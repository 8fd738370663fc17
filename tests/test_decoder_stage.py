"""The decoder fine-tune may only sharpen pictures: it must leave the latent space the UNet was
trained on exactly as it was, and the model's stages must keep within the training budget."""

import pytest

torch = pytest.importorskip("torch")
S = pytest.importorskip("train.scenes")
from diffusers import AutoencoderKL  # noqa: E402

from train import models as M  # noqa: E402
from train import stages as ST  # noqa: E402

ROOT = ST.ROOT


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    images, captions, objs, bgs = S.build_dataset(8, seed=5, train=True)
    monkeypatch.setattr(ST, "RUN_DIR", tmp_path)
    monkeypatch.setattr(ST, "_dataset", lambda *a, **k: (images, captions, objs, bgs))
    torch.manual_seed(0)
    vae = M.vae()
    vae.save_pretrained(tmp_path / "vae")
    with torch.no_grad():
        latents = vae.encode(M.to_tensor(images)).latent_dist.mean
    torch.save({"latents": latents * 0.5, "scaling_factor": 0.5}, tmp_path / "encoded.pt")
    return tmp_path


def test_decoder_finetune_changes_the_decoder_and_nothing_else(run_dir):
    ST.finetune_decoder(minutes=0.03, batch=2)
    before = AutoencoderKL.from_pretrained(run_dir / "vae").state_dict()
    after = AutoencoderKL.from_pretrained(run_dir / "vae_decoder").state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    tuned = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and tuned
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in tuned)


def test_the_model_budget_leaves_the_judge_out_and_fits_three_hours():
    import inspect

    assert "judge" not in ST.MODEL_STAGES and set(ST.MODEL_STAGES) <= set(ST.STAGES)
    minutes = {
        n: inspect.signature(ST.STAGES[n]).parameters["minutes"].default
        for n in ST.MODEL_STAGES
        if "minutes" in inspect.signature(ST.STAGES[n]).parameters
    }
    assert all(m <= 90 for m in minutes.values())
    assert sum(minutes.values()) + 7 <= 180  # + encode, which has no budget: 7 minutes measured


def test_the_committed_encoder_is_the_one_the_unet_learned_on():
    """The scaling factor was set to 1/std of the training latents before the UNet trained; if the
    shipped encoder had been touched since, fresh scenes' latents would no longer have unit std."""
    model = ROOT / "models" / "default"
    vae = AutoencoderKL.from_pretrained(model / "vae").eval()
    images, _, _, _ = S.build_dataset(200, seed=31, train=True)
    with torch.no_grad():
        z = vae.encode(M.to_tensor(images)).latent_dist.mean * vae.config.scaling_factor
    assert abs(z.std().item() - 1.0) < 0.1


def test_vae_tune_moves_encoder_and_decoder_and_is_what_package_ships(run_dir):
    assert ST.shipped_vae_dir() == run_dir / "vae"
    ST.tune_vae(minutes=0.03, batch=4)
    before = AutoencoderKL.from_pretrained(run_dir / "vae").state_dict()
    after = AutoencoderKL.from_pretrained(run_dir / "vae_tuned").state_dict()
    for half in ("encoder.", "decoder."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(half))
    assert ST.shipped_vae_dir() == run_dir / "vae_tuned"
    assert not (run_dir / "vae_tune.pt").exists()  # finished: the next run continues from vae_tuned
    ST.tune_vae(minutes=0.02, batch=4)
    again = AutoencoderKL.from_pretrained(run_dir / "vae_tuned").state_dict()
    assert any(not torch.equal(after[k], again[k]) for k in after)


def test_encode_uses_the_shipped_vae_and_says_so(run_dir):
    """A UNet trained after `vae_tune` learns the tuned encoder's latents (the ones its decoder was tuned
    for), and the next tune holds the encoder to the one that made them; older files mean runs/vae."""
    assert ST.encoded_with() == run_dir / "vae"  # the fixture's file says nothing: made before round 9
    ST.tune_vae(minutes=0.02, batch=4)
    M.text_encoder().save_pretrained(run_dir / "text_encoder")
    (run_dir / "encoded.pt").unlink()
    ST.encode()
    enc = torch.load(run_dir / "encoded.pt", weights_only=False)
    assert ST.encoded_with() == run_dir / enc["vae"] != run_dir / "vae_tuned"
    tuned = AutoencoderKL.from_pretrained(run_dir / "vae_tuned").eval()
    images = ST._dataset()[0]
    with torch.no_grad():
        want = tuned.encode(M.to_tensor(images)).latent_dist.mean * enc["scaling_factor"]
    assert torch.allclose(enc["latents"], want, atol=1e-5)
    ST.tune_vae(minutes=0.02, batch=4)  # rewrites vae_tuned; the encoder the latents came from stays as it was
    kept = AutoencoderKL.from_pretrained(ST.encoded_with()).state_dict()
    assert all(torch.equal(kept[k], v) for k, v in tuned.state_dict().items())
    assert any(not torch.equal(v, kept[k]) for k, v in AutoencoderKL.from_pretrained(run_dir / "vae_tuned").state_dict().items())


def test_object_pixels_and_recoloured_scenes():
    """The tune's loss weighs object pixels (not the plain background's colour); its recoloured half keeps
    every object pixel where it was and gives a plain background one flat colour."""
    import numpy as np

    images, _, _, bgs = S.build_dataset(40, seed=7, train=True)
    bgs = np.asarray(bgs)
    plain = [i for i, b in enumerate(bgs) if S.BACKGROUNDS[b][3] is None and S.BACKGROUNDS[b][0] != "night"]
    patterned = [i for i, b in enumerate(bgs) if S.BACKGROUNDS[b][3] is not None]
    assert plain and patterned
    idx = np.array(plain + patterned)
    mask = ST._object_mask(images, idx, bgs)[:, 0].numpy()
    for k, i in enumerate(plain):
        top = np.array(S.BACKGROUNDS[bgs[i]][2])
        assert 0 < mask[k].mean() < 0.6  # an object, on a background
        assert np.abs(images[i][mask[k] == 0].astype(int) - top).max() <= 12  # the rest is background
    assert mask[len(plain) :].sum() == 0  # no object weights where the background is a picture
    x = ST._recolour(images, idx, bgs, np.random.default_rng(0))
    assert x.shape == images[idx].shape and x.dtype == images.dtype
    changed = 0
    for k, i in enumerate(plain):
        back = x[k][mask[k] == 0].reshape(-1, 3)
        assert len(np.unique(back, axis=0)) <= len(np.unique(images[i][mask[k] == 0].reshape(-1, 3), axis=0))
        changed += int(not np.array_equal(x[k], images[i]))
    assert changed > 0
    again = ST._recolour(images, idx, bgs, np.random.default_rng(0), camouflage=0.0)
    assert np.array_equal(x, again)  # no camouflage: the recipe round 8 was trained with, draw for draw
    hid = ST._recolour(images, idx, bgs, np.random.default_rng(0), camouflage=1.0)
    camouflaged = 0
    for k, i in enumerate(plain):
        colours, counts = np.unique(hid[k][mask[k] == 0].reshape(-1, 3), axis=0, return_counts=True)
        flat = colours[counts.argmax()].astype(int)  # the background (a few edge pixels keep their blend)
        order = next(
            o for o in [(0, 1, 2), *ST._CHANNEL_ORDERS] if np.array_equal(hid[k][mask[k] == 1], images[i][mask[k] == 1][:, o])
        )
        own = images[i][mask[k] == 1][:, order].astype(int)  # the object untouched, up to the channel order
        if np.array_equal(flat, np.array(S.BACKGROUNDS[bgs[i]][2])[list(order)]):
            continue  # this one kept its background colour
        assert np.abs(own - flat).max(-1).min() <= 8  # the background: one of the object's own colours, ± 8
        camouflaged += 1
    assert camouflaged > 0

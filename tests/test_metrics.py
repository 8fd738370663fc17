"""The evaluation's image metrics give the ceiling on real scenes and chance (or worse) on scrambled ones."""
import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")
S = pytest.importorskip("train.scenes")
from train import evaluate as E  # noqa: E402
from train import metrics as X  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "models" / "default"
HELD = S.held_out_prompts()


@pytest.fixture(scope="module")
def judge():
    return E.load_judge()


@pytest.fixture(scope="module")
def singles():
    """400 fresh real single-object scenes (any caption form), with what the generator placed."""
    rng, out = random.Random(5150), []
    while len(out) < 400:
        sc = S.sample_scene(rng, train=False)
        if len(sc.objects) == 1:
            out.append(sc)
    return out


@pytest.fixture(scope="module")
def real_sets():
    """Two disjoint real sets of the held-out prompts (4 scenes each), placed as unspecified captions are."""
    return X.real_scenes(HELD, 4, seed=1), X.real_scenes(HELD, 4, seed=2)


def test_locator_finds_the_true_position_and_size_of_real_scenes(singles):
    found = [X.locate(S.render(sc), sc.background, sc.objects[0]) for sc in singles]
    pos = np.mean([f["position"] == sc.positions[0] for f, sc in zip(found, singles)])
    size = np.mean([f["size"] == sc.sizes[0] for f, sc in zip(found, singles)])
    assert pos >= 0.95 and size >= 0.90, (pos, size)
    # without knowing the object (the mean calibration) it still finds the position
    blind = np.mean([X.locate(S.render(sc), sc.background)["position"] == sc.positions[0] for sc in singles[:150]])
    assert blind >= 0.9, blind


def test_locator_on_a_plain_background_finds_nothing():
    for bg in range(len(S.BACKGROUNDS)):
        img = S.render(S.Scene([], bg, [], [], "", seed=3))
        f = X.locate(img, bg, 0)
        assert f["area"] == 0 and f["position"] is None and f["size"] is None, S.BACKGROUND_NAMES[bg]


def test_position_coverage_of_real_unspecified_scenes():
    held = [h for h in HELD if len(h[1]) == 1][::6]  # 8 prompts
    groups = [X.locate_all(im, h[2], h[1][0]) for im, h in zip(X.real_scenes(held, 16, seed=7), held)]
    now = X.position_coverage(groups)
    assert now["mean_positions"] >= 5 and now["mean_sizes"] >= 2.5 and now["mean_side_std"] > 4, now
    old = [X.locate_all(im, h[2], h[1][0]) for im, h in zip(X.real_scenes(held, 16, seed=7, old=True), held)]
    assert X.position_coverage(old)["mean_positions"] < now["mean_positions"] - 1
    # one scene repeated 16 times covers one position, one size
    same = [[g[0]] * 16 for g in groups]
    assert X.position_coverage(same)["mean_positions"] == 1 and X.position_coverage(same)["mean_sizes"] == 1


def test_word_prompts_are_phrased_as_training_captions_and_real_scenes_obey_them():
    wp = X.word_prompts(18)
    assert len(wp["position"]) == 18 and len(wp["size"]) == 18
    assert {a for *_, a in wp["position"]} == set(S.POSITIONS) and {a for *_, a in wp["size"]} == {"small", "big"}
    held_pairs = {(o[0], bg) for _, o, bg in HELD if len(o) == 1}
    for kind in ("position", "size"):
        for prompt, obj, bg, asked in wp[kind][:6]:
            assert (obj, bg) in held_pairs
            args = (asked, None) if kind == "position" else (None, asked)
            assert any(S.caption_single(random.Random(i), obj, bg, *args) == prompt for i in range(400)), prompt
        imgs = X.real_word_scenes(wp[kind], kind, 4, seed=9)
        found = [f for (_, o, b, _), im in zip(wp[kind], imgs) for f in X.locate_all(im, b, o)]
        asked = [a for *_, a in wp[kind] for _ in range(4)]
        assert X.obedience(found, asked, kind) >= 0.9
        # the same images judged against other words: far lower
        other = asked[4:] + asked[:4] if kind == "size" else [X.POSITION_NAMES[(X.POSITION_NAMES.index(a) + 1) % 9] for a in asked]
        assert X.obedience(found, other, kind) <= 0.3


def test_features_are_what_the_judge_heads_read(judge, real_sets):
    imgs = real_sets[0][:4, :2]
    f = X.features(judge, imgs)
    assert f.shape == (8, 128)
    with torch.no_grad():
        lo, lb = judge(E.M.to_tensor(imgs.reshape(-1, 64, 64, 3)))
        np.testing.assert_allclose(judge.objects(torch.from_numpy(f).float()).numpy(), lo.numpy(), atol=1e-4)


def test_fid_formula():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16))
    b = rng.standard_normal((300, 16)) * 2 + 1
    assert abs(X.fid(a, a)) < 1e-6
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert X.fid(a, b) == pytest.approx(ref, rel=1e-6)


def test_fid_real_vs_real_is_small_and_scrambled_is_large(judge, real_sets):
    a, b = real_sets
    fa, fb = X.features(judge, a), X.features(judge, b)
    real = X.fid(fa, fb)
    rng = np.random.default_rng(0)
    flat = b.reshape(-1, 64 * 64, 3)
    shuffled = np.stack([im[rng.permutation(64 * 64)] for im in flat]).reshape(b.shape)  # pixels shuffled within each image
    wrong_bg = X.real_scenes([(p, o, (bg + 4) % len(S.BACKGROUNDS)) for p, o, bg in HELD], 4, seed=2)  # every background wrong
    f_shuf, f_wrong = X.fid(fa, X.features(judge, shuffled)), X.fid(fa, X.features(judge, wrong_bg))
    assert real * 5 < f_shuf and real * 3 < f_wrong, (real, f_shuf, f_wrong)


@pytest.mark.skipif(not (DEFAULT / "clip_image" / "config.json").is_file(), reason="models/default has no clip_image")
def test_clip_score_real_captions_beat_shuffled_ones(real_sets):
    clip = X.Clip.load(DEFAULT)
    imgs = real_sets[0]
    prompts = [p for p, _, _ in HELD]
    right = X.clip_score(clip, imgs, prompts)
    wrong = X.clip_score(clip, imgs, prompts[len(prompts) // 2:] + prompts[: len(prompts) // 2])
    assert right > wrong + 20, (right, wrong)
    # one image per prompt works too, and equals the [P, 1, ...] form
    assert X.clip_score(clip, imgs[:, 0], prompts) == pytest.approx(X.clip_score(clip, imgs[:, :1], prompts), abs=1e-4)


def test_quick_settings_and_cli_namespace_defaults():
    import argparse

    cli = argparse.Namespace(model=str(DEFAULT), seeds=8, steps=25, scheduler=None, out="x")  # what app/cli.py passes
    o = E._settings(cli)
    assert o["guidances"] == E.GUIDANCES and o["seeds_for"] == {g: 8 for g in E.GUIDANCES}
    assert o["diversity_seeds"] == 16 and o["word_seeds"] == 8 and not o["quick"]
    q = E._settings(E._parser().parse_args(["--quick", "--model", "m", "--out", "o"]))
    assert q["quick"] and q["seeds"] == 2 and q["steps"] == 10 and q["model"] == "m" and q["out"] == "o"
    p = E._settings(E._parser().parse_args(["--guidance-seeds", "0=1,7.5=4"]))
    assert p["seeds_for"][0.0] == 1 and p["seeds_for"][7.5] == 4 and p["seeds_for"][3.0] == 8

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
    # without knowing the object (the mean calibration) it still finds the position; what it misses are big
    # objects at the sides, which scenes.MARGIN pushes toward the centre (margin 2: 0.91, 4: 0.86)
    blind = np.mean([X.locate(S.render(sc), sc.background)["position"] == sc.positions[0] for sc in singles[:150]])
    assert blind >= 0.85, blind


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
        other = (
            asked[4:] + asked[:4] if kind == "size" else [X.POSITION_NAMES[(X.POSITION_NAMES.index(a) + 1) % 9] for a in asked]
        )
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
    wrong = X.clip_score(clip, imgs, prompts[len(prompts) // 2 :] + prompts[: len(prompts) // 2])
    assert right > wrong + 20, (right, wrong)
    # one image per prompt works too, and equals the [P, 1, ...] form
    assert X.clip_score(clip, imgs[:, 0], prompts) == pytest.approx(X.clip_score(clip, imgs[:, :1], prompts), abs=1e-4)


def test_quick_settings_and_cli_namespace_defaults():
    import argparse

    # the defaults: 8 seeds per prompt at guidance 3 and 7.5, 4 at 1; 12 diversity prompts × 16 seeds; 9 word prompts × 8
    want = {1.0: 4, 3.0: 8, 7.5: 8}
    cli = argparse.Namespace(model=str(DEFAULT), seeds=8, steps=25, scheduler=None, out="x")  # the fewest app/cli.py passes
    for o in (E._settings(cli), E._settings(E._parser().parse_args([]))):
        assert o["guidances"] == E.GUIDANCES == (1.0, 3.0, 7.5) and o["seeds_for"] == want, o["seeds_for"]
        assert o["diversity_seeds"] == 16 and o["diversity_prompts"] == 12 and not o["quick"]
        assert o["word_prompts"] == 9 and o["word_seeds"] == 8
    q = E._settings(E._parser().parse_args(["--quick", "--model", "m", "--out", "o"]))
    assert q["quick"] and q["seeds"] == 2 and q["steps"] == 10 and q["model"] == "m" and q["out"] == "o"
    assert set(q["seeds_for"].values()) == {2}
    p = E._settings(E._parser().parse_args(["--guidances", "0,1,3,7.5,12", "--guidance-seeds", "0=1,7.5=4"]))
    assert p["seeds_for"] == {0.0: 1, 1.0: 8, 3.0: 8, 7.5: 4, 12.0: 8}
    r2 = E._settings(E._parser().parse_args(["--seeds", "4", "--guidance-seeds", "1=2"]))  # round 2's
    assert r2["seeds_for"] == {1.0: 2, 3.0: 4, 7.5: 4}


# ---------------------------------------------------------------- inside the frame


def _sprite_scene(bg: int, obj: int, x: int, y: int, side: int = 28) -> np.ndarray:
    """A plain background with one emoji pasted at (x, y), partly outside the image when x or y is out of range."""
    from PIL import Image

    img = Image.new("RGB", (S.SIZE, S.SIZE), S.BACKGROUNDS[bg][2])
    sprite = S.emoji_image(S.OBJECTS[obj][0]).resize((side, side), Image.LANCZOS)
    img.paste(sprite, (x, y), sprite)
    return np.asarray(img, dtype=np.uint8)


def test_prompt_interval_counts_prompts_not_images():
    """Prompts that fail on every seed make a wide interval; the same mean spread evenly is narrow, and a
    perfect score has nothing to resample."""
    clustered = [1.0] * 45 + [0.0] * 3  # 0.9375: three prompts wrong on all their seeds
    even = [0.9375] * 48
    lo, hi = X.prompt_interval(clustered)
    assert lo < 0.9375 < hi and hi - lo > 0.1
    assert X.prompt_interval(even) == pytest.approx((0.9375, 0.9375))
    assert X.prompt_interval([1.0] * 12) == (1.0, 1.0)
    assert X.prompt_interval(clustered) == (lo, hi)  # seeded: the table does not change from run to run


def test_inside_the_frame_on_synthetic_images():
    bg, obj = 4, 0  # a cat face on blue
    whole = _sprite_scene(bg, obj, 18, 18)
    assert X.locate(whole, bg, obj)["edge"] is False
    for x, y in ((-10, 18), (18, -8), (50, 18), (18, 46), (-6, -6), (60, 60)):  # cut off by each side and corner
        f = X.locate(_sprite_scene(bg, obj, x, y), bg, obj)
        assert f["area"] and f["edge"] is True, (x, y)
    flush = np.full_like(whole, S.BACKGROUNDS[bg][2])
    flush[20:40, 0:20] = (240, 200, 40)  # a whole square flush against the left edge: touches it
    assert X.locate(flush, bg, obj)["edge"] is True
    specks = whole.copy()
    specks[0, 10:13] = 255  # 3 px on the top row: a speck under MIN_BLOB, not the object
    assert X.locate(specks, bg, obj)["edge"] is False
    assert X.locate(_sprite_scene(bg, obj, 200, 200), bg, obj)["edge"] is None  # nothing located
    groups = [
        [X.locate(im, bg, obj) for im in (whole, flush, whole, whole)],
        [X.locate(im, bg, obj) for im in (whole, _sprite_scene(bg, obj, 200, 200))],
    ]
    fr = X.inside_frame(groups)
    assert (
        fr["located"] == 5 and fr["touching_edge"] == 1 and fr["inside"] == pytest.approx(0.8) and fr["min_prompt_inside"] == 0.75
    )
    assert X.position_coverage(groups)["inside"] == pytest.approx(0.8)
    assert np.isnan(X.inside_frame([[X.locate(_sprite_scene(bg, obj, 200, 200), bg, obj)]])["inside"])


def test_real_renders_are_inside_the_frame_and_flush_ones_are_not():
    held = [h for h in HELD if len(h[1]) == 1][::4]  # the 12 diversity prompts

    def inside(**kw):
        groups = [X.locate_all(im, h[2], h[1][0]) for im, h in zip(X.real_scenes(held, 16, seed=303, **kw), held)]
        return X.inside_frame(groups)

    now = inside()
    assert now["inside"] >= 0.95 and now["located"] >= 150, now  # objects drawn whole, scenes.MARGIN px clear of the edge
    flush = inside(edge_margin=0)  # rounds 1 and 2's generator: clamped flush, so big ones at the sides touch
    assert flush["inside"] < now["inside"] - 0.05, (flush, now)
    before = getattr(S, "MARGIN", 0)  # margin() sets scenes.MARGIN and restores it
    with X.margin(0):
        assert S.MARGIN == 0
    assert getattr(S, "MARGIN", 0) == before
    for kind, items in X.word_prompts(9).items():  # real renders of the word prompts too
        imgs = X.real_word_scenes(items, kind, 4, seed=9)
        assert X.inside_frame([[f for (_, o, b, _), im in zip(items, imgs) for f in X.locate_all(im, b, o)]])["inside"] >= 0.95


def test_grid_tiles_read_back_what_grid_wrote(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 16, 64, 64, 3), dtype=np.uint8)
    E._grid({"guidance 3": imgs}, [f"p{i}" for i in range(5)], tmp_path / "g.png", n_seeds=16)
    np.testing.assert_array_equal(E.grid_tiles(tmp_path / "g.png", 5, 16), imgs)
    E._grid({"words": imgs[:, :8]}, [f"p{i}" for i in range(5)], tmp_path / "w.png", n_seeds=8)
    np.testing.assert_array_equal(E.grid_tiles(tmp_path / "w.png", 5, 8), imgs[:, :8])
    assert E.grid_tiles(tmp_path / "w.png", 5, 16) is None  # another layout


def test_judge_on_real_renders_per_prompt(judge):
    held = [h for h in HELD if len(h[1]) == 1][:8] + [h for h in HELD if len(h[1]) == 2][:2]
    r = E.judge_on_real_renders(judge, held, n=8)
    assert len(r["per_prompt"]) == 10 and r["renders"] == 8
    assert r["single_right"] >= 0.9, r
    assert all(0 <= p["right"] <= min(p["objects"], p["background"]) for p in r["per_prompt"])
    assert set(r["failing"]) == {p["prompt"] for p in r["per_prompt"] if p["right"] < E.JUDGE_FAILS_BELOW}
    assert len(E.judge_on_real_renders(judge, held[:4], n=4, threshold=1.01)["failing"]) == 4


def test_index_puts_the_shipped_round_first_with_every_figure_side_by_side(tmp_path):
    import shutil

    for r in ("round1", "round2"):
        (tmp_path / r).mkdir()
        for f in ("table.md", "results.json"):
            shutil.copy(ROOT / "evaluation" / r / f, tmp_path / r / f)
    text = E.write_index(tmp_path, "round1").read_text()
    assert text.index("## Shipped: round1") < text.index("### round2 (newer, not shipped)")
    text = E.write_index(tmp_path).read_text()  # default: the highest round
    assert text.index("## Shipped: round2") < text.index("## Every figure") < text.index("### round1")
    row = next(line for line in text.splitlines() if line.startswith("| object accuracy, guidance 7.5 |"))
    assert row == "| object accuracy, guidance 7.5 | 0.891 | **0.906** | +0.016 |", row
    assert "| seed diversity: positions covered (mean of 9) | 3.83 | **6.00** | +2.17 |" in text

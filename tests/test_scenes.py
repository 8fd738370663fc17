"""The default model's dataset: deterministic, captioned, with held-out combinations kept out of training."""

import random

import numpy as np
import pytest

S = pytest.importorskip("train.scenes")


def test_deterministic_from_seed():
    a = S.build_dataset(50, seed=3)
    b = S.build_dataset(50, seed=3)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert a[0].shape == (50, 64, 64, 3) and a[0].dtype == np.uint8


def test_vocabulary_size_and_kinds():
    assert len(S.OBJECTS) >= 40
    assert {k for _, k, _ in S.OBJECTS} == {"animal", "food", "vehicle", "weather", "plant", "object"}
    for short, _, _ in S.OBJECTS:
        assert S.emoji_image(short).size == (64, 64)


def test_training_never_draws_held_out_combinations():
    rng = random.Random(0)
    for _ in range(5000):
        sc = S.sample_scene(rng, train=True)
        for o in sc.objects:
            assert S.held_out_background(o) != sc.background
        if len(sc.objects) == 2:
            assert not S.held_out_pair(*sc.objects)
    held = S.held_out_prompts()
    assert sum(len(o) == 1 for _, o, _ in held) == len(S.OBJECTS) and any(len(o) == 2 for _, o, _ in held)


def test_captions_name_what_is_drawn():
    rng = random.Random(1)
    for _ in range(300):
        sc = S.sample_scene(rng)
        for o in sc.objects:
            assert any(p in sc.caption for p in S.OBJECTS[o][2]), sc.caption
        assert any(p in sc.caption for p in S.BACKGROUNDS[sc.background][1]) or S.BACKGROUND_NAMES[sc.background] in sc.caption


def test_camouflage_measures_objects_on_their_own_colour():
    """A star on yellow vanishes, a key on blue does not, and the held-out doughnut on orange is the
    doughnut's most camouflaged background (round 6 drew only its icing there)."""
    star, key, dough = (S.OBJECT_NAMES.index(n) for n in ("star", "key", "doughnut"))
    bg = S.BACKGROUND_NAMES.index
    assert S.camouflage(star, bg("yellow")) > 0.9
    assert S.camouflage(key, bg("blue")) < 0.05
    scores = [S.camouflage(dough, b) for b in range(len(S.BACKGROUNDS))]
    assert max(scores) == scores[bg("orange")] == scores[S.held_out_background(dough)] > 0.2


def test_batch_groups_draw_the_asked_shares():
    """`train --pair-share/--hard-share`: a batch's make-up; the groups split the data, every camouflaged
    single object scores above the bar and no other does."""
    from train.stages import batch_groups

    _, _, objects, backgrounds = S.build_dataset(600, seed=5)
    groups, counts = batch_groups(objects, backgrounds, 32, pair_share=0.5, hard_share=0.35)
    assert counts == [16, 6, 10]
    assert sorted(np.concatenate(groups).tolist()) == list(range(600))
    assert (objects[groups[0]].sum(1) == 2).all() and (objects[groups[1]].sum(1) == 1).all()
    camo = lambda i: S.camouflage(int(objects[i].argmax()), int(backgrounds[i]))  # noqa: E731
    assert all(camo(i) > 0.3 for i in groups[1]) and all(camo(i) <= 0.3 for i in groups[2])
    # left None, each share is the data's own
    _, natural = batch_groups(objects, backgrounds, 32)
    assert natural[0] == round(32 * (objects.sum(1) == 2).mean())

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

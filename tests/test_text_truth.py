"""Issue 27: every sentence the page shows is true of the model on screen and of the literature.

What a test can keep honest: the model-card facts the page's text (web/src/text/) quotes exist in
models/default/explainer.json and agree with where they come from (train/stages.py's defaults, the
README's record of the run, the evaluation's results.json, the model's own configs); and the text
contains none of the false phrases issue 27 found. Fast, no browser, no torch (except the one check
that about() still writes this card, skipped where torch is missing).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "default"
TEXT = ROOT / "web" / "src" / "text"
CARD = json.loads((MODEL / "explainer.json").read_text(encoding="utf-8"))
FACTS = CARD.get("facts", {})

# issue 27's findings: phrases that are false of the model on screen or of the literature
BANNED = [
    "millions of pictures",  # this CLIP was trained here, on emoji captions
    "where each word looks",  # image positions are the queries, tokens the keys
    "averages the last few",  # PLMS extrapolates with (55, −59, 37, −9)/24
    "if the model stopped",  # x̂₀ is the current average guess; stopping leaves x_t
    "what the model believes the image will be",
    "how noisy it should be",  # the timestep says how noisy the input is now
    "in the context of the whole prompt",  # CLIP's text transformer is causal
    '"points at" pictures',
    "the image tower it was trained with",  # the tower was trained afterwards, against the frozen encoder
    "trained together on images",
    "follow your words more strictly",  # only up to a point (this model's own evaluation)
]


def _text_sources() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in sorted(TEXT.glob("*.ts")) if not p.name.endswith(".test.ts")}


def _get(d: dict, path: str):
    for k in path.split("."):
        assert isinstance(d, dict) and k in d, f"model card lacks facts.{path}"
        d = d[k]
    return d


def _stage_default(func: str, arg: str):
    """A keyword default of a function in train/stages.py, read with ast (no torch import)."""
    tree = ast.parse((ROOT / "train" / "stages.py").read_text(encoding="utf-8"))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func)
    args = fn.args.args[len(fn.args.args) - len(fn.args.defaults) :]
    return next(ast.literal_eval(d) for a, d in zip(args, fn.args.defaults) if a.arg == arg)


# ---- the card has what the text quotes -----------------------------------------------------------------

QUOTED = [  # facts.* paths that web/src/text reads (by their last name)
    "unet.caption_dropout",
    "unet.cross_attention_resolutions",
    "text_encoder.trained_on",
    "text_encoder.pairs",
    "text_encoder.minutes",
    "text_encoder.object_retrieval",
    "text_encoder.hidden_size",
    "text_encoder.layers",
    "clip_image.minutes",
    "clip_image.knows",
    "clip_cosine.real_own_prompt",
    "clip_cosine.real_other_prompt",
    "guidance.evaluation.rows",
    "guidance.evaluation.prompts",
    "attention.miou_object",
    "attention.miou_background_word",
    "attention.daam_coco",
    "scheduler.ships",
    "scheduler.why",
    "trained_by",
]


@pytest.mark.parametrize("path", QUOTED)
def test_card_has_the_fact_the_text_quotes(path):
    _get(FACTS, path)
    assert any(path.split(".")[-1] in src for src in _text_sources().values()), f"no text module reads facts.{path}"


def test_card_facts_agree_with_their_sources():
    # train/stages.py: caption dropout of the UNet stage, dataset size, CLIP batch
    assert FACTS["unet"]["caption_dropout"] == _stage_default("train_unet", "dropout") == 0.1
    assert FACTS["guidance"]["caption_dropout"] == FACTS["unet"]["caption_dropout"]
    n_train = int(re.search(r'DX_N_TRAIN", ([\d_]+)', (ROOT / "train" / "stages.py").read_text()).group(1).replace("_", ""))
    assert FACTS["data"]["images"] == FACTS["text_encoder"]["pairs"] == n_train
    assert FACTS["text_encoder"]["batch"] == _stage_default("train_clip", "batch")
    # train/README.md: the committed run's CLIP stage and total
    readme = (ROOT / "train" / "README.md").read_text(encoding="utf-8")
    te = FACTS["text_encoder"]
    assert f"| CLIP | {te['minutes']} min | {te['steps']:,} steps × {te['batch']} pairs" in readme
    assert f"for {round(te['object_retrieval'] * 100)}% of fresh images" in readme
    assert f"{FACTS['training_minutes']} minutes in all" in readme
    # the model's own configs: sizes, attention resolutions, scheduler
    unet = json.loads((MODEL / "unet" / "config.json").read_text())
    vae = json.loads((MODEL / "vae" / "config.json").read_text())
    assert FACTS["sizes"]["latent"] == [unet["in_channels"], unet["sample_size"], unet["sample_size"]]
    assert FACTS["sizes"]["image"] == [vae["sample_size"], vae["sample_size"]]
    res = [unet["sample_size"] // 2**i for i, b in enumerate(unet["down_block_types"]) if b.startswith("CrossAttn")]
    assert FACTS["unet"]["cross_attention_resolutions"] == res
    sched = json.loads((MODEL / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == FACTS["scheduler"]["ships"] + "Scheduler"
    assert sched["timestep_spacing"] == FACTS["scheduler"]["timestep_spacing"]
    assert sched["set_alpha_to_one"] == FACTS["scheduler"]["set_alpha_to_one"]
    # the CLIP image tower's own record
    tower = json.loads((MODEL / "clip_image" / "config.json").read_text())["training"]
    assert FACTS["clip_image"]["minutes"] == round(tower["minutes"], 1)
    assert FACTS["clip_image"]["object_retrieval"] == tower["object_retrieval_after"]
    # README.md: attention localisation and the scheduler choice
    top = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"mIoU **{FACTS['attention']['miou_object']}** for the object word" in top
    assert f"**{FACTS['attention']['miou_background_word']}** for the background word" in top
    assert "0.05" in top and "so the model ships DDIM" in top


def test_guidance_facts_are_the_evaluation_file_they_name():
    g = FACTS["guidance"]
    assert g["default"] == CARD["guidance"]
    ev = json.loads((ROOT / g["evaluation"]["source"]).read_text())
    rows = {r["guidance"]: r for r in ev["rows"]}
    for row in g["evaluation"]["rows"]:
        src = rows[row["scale"]]
        for k in ("object_accuracy", "background_accuracy", "pair_both_objects"):
            assert row[k] == round(src[k], 3), (row["scale"], k)
    assert g["evaluation"]["prompts"] == len(ev["prompts"])
    real = ev["real_distribution"]
    assert FACTS["clip_cosine"]["real_own_prompt"] == round(real["clip_real"] / 100, 2)
    assert FACTS["clip_cosine"]["real_other_prompt"] == round(real["clip_real_shuffled"] / 100, 2)
    # the default is where pairs (both objects named) score best among the scales evaluated, as the page
    # says, with single objects within a point of their best scale
    rows = g["evaluation"]["rows"]
    assert max(rows, key=lambda r: r["pair_both_objects"])["scale"] == g["default"]
    at_default = next(r for r in rows if r["scale"] == g["default"])
    assert at_default["object_accuracy"] >= max(r["object_accuracy"] for r in rows) - 0.01


def test_about_writes_this_card():
    pytest.importorskip("torch")
    from train import stages

    assert stages.about() == CARD, "models/default/explainer.json is out of date: write it from train.stages.about()"


# ---- the text says nothing false ----------------------------------------------------------------------


def _banned_in(files: dict[Path, str]) -> list[str]:
    found = []
    for path, src in files.items():
        low = src.lower()
        found += [f"{path.relative_to(ROOT)}: “{b}”" for b in BANNED if b.lower() in low]
        for i, line in enumerate(src.splitlines(), 1):  # the reference's name only beside the true one
            if "Image Upscaler" in line and "VAE decoder" not in line:
                found.append(f"{path.relative_to(ROOT)}:{i}: “Image Upscaler” without “VAE decoder”")
    return found


def test_text_modules_have_no_false_phrase():
    files = _text_sources()
    assert files, "web/src/text has no modules"
    assert _banned_in(files) == []


def test_text_modules_are_plain_strings_not_html():
    for path, src in _text_sources().items():
        assert not re.search(r"<(b|i|em|strong|sub|sup|span|a|p|br)\b[^>]*>", src), f"{path.name} writes HTML"
        assert "{@html" not in src and "innerHTML" not in src


# the explainer views and chart kit integrated with web/src/text (issue 27): strict
VIEWS_INTEGRATED = ["Text", "Clip", "Attention", "Refiner", "Guidance", "Scheduler", "Decoder", "Seeds", "Compare", "Umap"]
# the layout's views (issue 23) take their sentences from text/article.ts, headerText and statusText
VIEWS_LAYOUT = ["Article", "Overview", "RunView", "Timeline", "Tour"]


def _web_files(patterns) -> dict[Path, str]:
    web = ROOT / "web" / "src"
    return {p: p.read_text(encoding="utf-8") for pat in patterns for p in sorted(web.glob(pat))}


def test_views_have_no_false_phrase():
    """The explainer views (and the components they draw with) take their sentences from web/src/text."""
    files = _web_files([f"views/{v}.svelte" for v in VIEWS_INTEGRATED] + ["components/*.svelte"])
    assert len(files) >= len(VIEWS_INTEGRATED)
    assert _banned_in(files) == []


def test_layout_has_no_false_phrase():
    files = _web_files([f"views/{v}.svelte" for v in VIEWS_LAYOUT] + ["controls/*.svelte", "App.svelte"])
    assert _banned_in(files) == []


def test_every_view_is_in_one_list():
    """A new view joins one of the two lists above, so no view escapes the check."""
    have = {p.stem for p in (ROOT / "web" / "src" / "views").glob("*.svelte")}
    assert have <= set(VIEWS_INTEGRATED) | set(VIEWS_LAYOUT), have - set(VIEWS_INTEGRATED) - set(VIEWS_LAYOUT)

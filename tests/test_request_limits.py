"""One source of a request's limits and defaults: runtime/trace.py's Request. The page reads them from
Engine.describe()["request"] (its shape is what web/ codes against), the command line from Request."""

import json

import pytest

from runtime.trace import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, Request

EXPECTED_LIMITS = {
    "seed": {"min": 0, "max": 4294967295},
    "steps": {"min": 1, "max": 100},
    "guidance": {"min": 0, "max": 20},
    "promptChars": {"max": 5000},
}


def test_describe_without_a_model_card():
    assert Request.describe("ddim") == {
        "limits": EXPECTED_LIMITS,
        "defaults": {
            "prompt": "a red apple on a blue background",
            "negativePrompt": "",
            "seed": 0,
            "guidance": 7.5,
            "steps": 25,
            "scheduler": "ddim",
            "previewEvery": 1,
        },
    }
    json.dumps(Request.describe("ddim"))  # plain data: it crosses into JavaScript


def test_describe_with_a_model_card():
    d = Request.describe("euler", {"examples": ["a cat on a blue background", "a dog"], "guidance": 3})["defaults"]
    assert d["prompt"] == "a cat on a blue background" and d["guidance"] == 3.0 and d["scheduler"] == "euler"
    d = Request.describe("euler", {"examples": [], "guidance": True})["defaults"]  # no examples, no usable guidance
    assert d["prompt"] == "a red apple on a blue background" and d["guidance"] == 7.5


def test_limits_are_the_ones_validate_enforces():
    lim = Request.describe()["limits"]
    Request("x", seed=lim["seed"]["max"], steps=lim["steps"]["max"], guidance=lim["guidance"]["max"]).validate("euler")
    Request("x" * lim["promptChars"]["max"], seed=0, steps=lim["steps"]["min"], guidance=lim["guidance"]["min"]).validate("euler")
    for bad in (
        {"seed": MAX_SEED + 1},
        {"steps": MAX_STEPS + 1},
        {"steps": 0},
        {"guidance": MAX_GUIDANCE + 0.5},
        {"guidance": -0.1},
        {"prompt": "x" * (MAX_PROMPT_CHARS + 1)},
    ):
        with pytest.raises(ValueError):
            Request(**{"prompt": "x", **bad}).validate("euler")


def _engine(bundle_dir, about=None):
    """runtime.web.Engine without Pyodide: the bundle and pipeline it would hold."""
    from runtime.bundle import Bundle
    from runtime.pipeline import Pipeline
    from runtime.web import Engine

    bundle = Bundle.from_dir(bundle_dir, verify=False)
    if about is not None:
        bundle.manifest["about"] = about
    engine = Engine.__new__(Engine)
    engine.bundle, engine.pipeline = bundle, Pipeline(bundle, backend=None)
    return engine


def test_engine_describe_carries_the_request(tiny_bundle):
    engine = _engine(tiny_bundle)
    default = engine.bundle.manifest["scheduler"]["default"]
    got = engine.description()["request"]
    assert got == Request.describe(default, {})
    assert got["limits"] == EXPECTED_LIMITS and got["defaults"]["scheduler"] == default
    card = _engine(tiny_bundle, {"examples": ["a small rocket at night"], "guidance": 3.0}).description()["request"]["defaults"]
    assert card["prompt"] == "a small rocket at night" and card["guidance"] == 3.0


def test_the_page_request_defaults_come_from_request():
    from runtime.web import request_from_js

    r = request_from_js({"prompt": "a cat"})
    assert (r.negative_prompt, r.seed, r.guidance, r.steps, r.scheduler, r.preview_every) == ("", 0, 7.5, 25, "", 1)


def test_the_command_line_takes_its_defaults_and_ranges_from_request():
    pytest.importorskip("torch")  # the CLI registers train's and bench's subcommands
    from app.cli import build_parser

    ap = build_parser()
    a = ap.parse_args(["generate", "a cat"])
    assert (a.seed, a.guidance, a.steps, a.negative_prompt) == tuple(
        Request.default(k) for k in ("seed", "guidance", "steps", "negative_prompt")
    )
    sub = next(x for x in ap._subparsers._group_actions[0].choices.items() if x[0] == "generate")[1]
    text = sub.format_help()
    assert f"1–{MAX_STEPS}" in text and f"0–{MAX_SEED}" in text and f"0–{MAX_GUIDANCE:g}" in text

"""One Trace schema: runtime/trace.py's dataclasses define it; the page's TypeScript types must match.

The worker builds its messages from these dataclasses (a field's key is its camelCase name), so a
field added on one side and not the other fails here instead of reaching a view as `undefined`.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from runtime.tokenizer import Tokenized
from runtime.trace import RUN_DONE_FIELDS, ClipScores, Plan, Request, StepTrace, Trace, camel

PROTOCOL = Path(__file__).resolve().parent.parent / "web" / "src" / "lib" / "protocol.ts"


def ts_fields(name: str) -> set[str]:
    text = PROTOCOL.read_text(encoding="utf-8")
    m = re.search(r"export interface " + name + r" \{(.*?)\n\}", text, re.S)
    assert m, f"protocol.ts has no `export interface {name} {{ … }}`"
    body = re.sub(r"/\*.*?\*/|//[^\n]*", "", m.group(1), flags=re.S)
    return set(re.findall(r"^\s*(\w+)\??:", body, re.M))


def keys(cls, only=None) -> set[str]:
    return {camel(f.name) for f in fields(cls) if (only is None or f.name in only) and not f.name.startswith("_")}


def test_typescript_types_match_the_python_schema():
    assert ts_fields("RequestMsg") == keys(Request)
    assert ts_fields("TokensMsg") == keys(Tokenized)
    assert ts_fields("PlanMsg") == keys(Plan)
    assert ts_fields("StepMsg") == keys(StepTrace)
    assert ts_fields("RunDoneMsg") == keys(Trace, RUN_DONE_FIELDS)
    assert ts_fields("ClipMsg") == keys(ClipScores)


def test_run_done_fields_are_trace_fields():
    assert set(RUN_DONE_FIELDS) <= {f.name for f in fields(Trace)} - {"plan", "steps"}


def test_camel_case():
    assert camel("noise_uncond") == "noiseUncond" and camel("pred_x0") == "predX0" and camel("timings_ms") == "timingsMs"

"""Linters and formatters, run by the README's test command so CI fails on a violation: ruff (lint and
format, configured in pyproject.toml) on the Python side; the page's `lint` (prettier, eslint,
svelte-check) and `test:unit` (vitest) npm scripts on the web side."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
pytestmark = pytest.mark.lint


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.is_file():
        return [str(exe)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.fail("ruff is not installed; pip install -e '.[test]' (scripts/setup.sh does)")


def _run(cmd: list[str], cwd: Path = ROOT, timeout: int = 600, fix: str = "") -> None:
    res = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    tail = "\n".join(res.stdout.strip().splitlines()[-40:])
    assert res.returncode == 0, f"`{' '.join(cmd)}` failed (exit {res.returncode}){fix}:\n{tail}"


def test_ruff_check():
    _run([*_ruff(), "check", "--output-format", "concise", "."], fix="; `ruff check --fix PATH` fixes the ones marked [*]")


def test_ruff_format():
    _run([*_ruff(), "format", "--check", "--output-format", "concise", "."], fix="; `ruff format PATH` formats them")


def _npm_script(name: str) -> list[str]:
    """The npm command for web/'s script `name`; skips (saying why) only where it cannot run here."""
    scripts = json.loads((WEB / "package.json").read_text(encoding="utf-8")).get("scripts", {})
    if name not in scripts:
        pytest.skip(f"web/package.json declares no `{name}` script")
    npm = shutil.which("npm")
    if not npm:
        pytest.skip(f"npm is not installed, so web/'s `{name}` script cannot run")
    if not (WEB / "node_modules").is_dir():
        pytest.skip(f"web/node_modules is missing (npm ci in web/, as scripts/setup.sh does), so `{name}` cannot run")
    return [npm, "--prefix", str(WEB), "run", name]


def test_web_lint():
    _run(_npm_script("lint"))


def test_web_unit_tests():
    _run(_npm_script("test:unit"))

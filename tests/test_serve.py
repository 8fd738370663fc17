"""`serve` exports the default model on first use, and again when the model changed (never a stale bundle);
the page's small build derived from it is tested in test_small_bundle.py."""

import json
import shutil

import pytest

pytest.importorskip("diffusers")

from app import serve  # noqa: E402
from export import exporter  # noqa: E402


def test_default_bundle_follows_the_model(tiny_pipeline_dir, tmp_path, monkeypatch):
    model, bundle = tmp_path / "models" / "default", tmp_path / "bundles" / "default"
    shutil.copytree(tiny_pipeline_dir, model)
    monkeypatch.setattr(serve, "DEFAULT_MODEL", model)
    monkeypatch.setattr(serve, "DEFAULT_BUNDLE", bundle)
    monkeypatch.setattr(serve, "ROOT", tmp_path)
    exports = []

    def fake_export(src, out, **kw):  # what matters here is when an export happens, not the export
        exports.append(src)
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text(json.dumps({"source_fingerprint": exporter.source_fingerprint(src)}))

    monkeypatch.setattr(exporter, "export_bundle", fake_export)
    logs = []
    assert serve._default_fp32_bundle(log=logs.append) == bundle and len(exports) == 1 and "first use" in logs[-1]
    serve._default_fp32_bundle(log=logs.append)
    assert len(exports) == 1  # unchanged model: the bundle is reused
    cfg = model / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace('"steps_offset": 1', '"steps_offset": 0'))
    serve._default_fp32_bundle(log=logs.append)
    assert len(exports) == 2 and "changed since" in logs[-1]

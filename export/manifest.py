"""The bundle's manifest.json: model facts, components' I/O, file sizes and hashes, tokenizer, scheduler, model card."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from importlib import metadata
from pathlib import Path

from runtime.bundle import FORMAT, FORMAT_VERSION, sha256_file
from runtime.trace import PAGE_MODEL_KEYS

from . import opgraphs

SCHEDULER_NAMES = {
    "PNDMScheduler": "pndm",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler",
    "DDIMScheduler": "ddim",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
    "LMSDiscreteScheduler": "lms",
}

ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 2: "uint8"}


def io_specs(model) -> tuple[list, list]:
    def spec(v):
        t = v.type.tensor_type
        return {
            "name": v.name,
            "dtype": ONNX_DTYPES.get(t.elem_type, str(t.elem_type)),
            "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim],
        }

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


def _versions() -> dict:
    out = {}
    for pkg in ("torch", "diffusers", "transformers", "optimum-onnx", "onnx", "onnxruntime"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def source_fingerprint(src) -> str:
    """sha256 over the checkpoint's configs and weights: tells whether a bundle is stale for its source."""
    import hashlib

    src = Path(src)
    h = hashlib.sha256()
    parts = (
        [src]
        if src.is_file()
        else sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".txt"))
    )
    for p in parts:
        h.update(str(p.relative_to(src) if p != src else p.name).encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def build_manifest(src, tmp, files, facts, errors, tolerance, name) -> dict:
    import onnx

    tok_cfg = (
        json.loads((src / "tokenizer" / "tokenizer_config.json").read_text())
        if (src / "tokenizer" / "tokenizer_config.json").exists()
        else {}
    )
    vocab = json.loads((src / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    pad = tok_cfg.get("pad_token") or "<|endoftext|>"
    pad = pad.get("content", "<|endoftext|>") if isinstance(pad, dict) else pad  # SD 2.x pads with "!"
    components = {}
    for comp, rels in files.items():
        model = onnx.load(str(tmp / rels[0]), load_external_data=False)
        inputs, outputs = io_specs(model)
        entry = {"files": rels, "precision": "fp32", "inputs": inputs, "outputs": outputs}
        if comp in errors:
            entry["verification"] = {
                **errors[comp],
                "tolerance": tolerance,
                "against": "PyTorch (diffusers/transformers) on random inputs",
            }
        if comp == "lincomb":
            entry["terms"] = opgraphs.LINCOMB_TERMS
        components[comp] = entry
    all_files = [r for rels in files.values() for r in rels] + ["tokenizer/vocab.json", "tokenizer/merges.txt"]
    table = {r: {"bytes": (tmp / r).stat().st_size, "sha256": sha256_file(tmp / r)} for r in all_files}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or src.name,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "source_fingerprint": source_fingerprint(facts.get("source", src)),
        "model": {k: facts[k] for k in ("source", *PAGE_MODEL_KEYS)},  # what the page reads, and where it came from
        "components": components,
        "files": table,
        "tokenizer": {
            "files": {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt"},
            "max_length": tok_cfg.get("model_max_length", 77) if tok_cfg.get("model_max_length", 77) < 10_000 else 77,
            "bos_id": vocab["<|startoftext|>"],
            "eos_id": vocab["<|endoftext|>"],
            "pad_token": pad,
            "pad_id": vocab[pad],
        },
        "scheduler": {"config": facts["scheduler_config"], "default": SCHEDULER_NAMES.get(facts["scheduler_class"], "euler")},
        "about": _about(src),
        "tools": _versions(),
    }


def _about(src: Path) -> dict:
    """Optional model card for the page (explainer.json beside model_index.json): what the model knows."""
    path = src / "explainer.json"
    if not path.is_file():
        return {}
    about = json.loads(path.read_text(encoding="utf-8"))
    return {
        "description": str(about.get("description", ""))[:2000],
        "examples": [str(e)[:300] for e in about.get("examples", [])][:24],
        **(
            {"guidance": min(20.0, max(0.0, float(about["guidance"])))} if isinstance(about.get("guidance"), (int, float)) else {}
        ),
        "vocabulary": {str(k): [str(v) for v in vs][:2000] for k, vs in dict(about.get("vocabulary", {})).items()},
        # what the page's sentences may say about this model (training data, its CLIP, guidance share…)
        **({"facts": about["facts"]} if isinstance(about.get("facts"), dict) else {}),
        # an architecture with random weights (prove-scale's builds): the page and trace files say so
        **({"random_weights": True} if about.get("random_weights") is True else {}),
    }

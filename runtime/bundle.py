"""The bundle: the contract between export/ and runtime/ (see manifest.json in any bundle).

Why a manifest with sizes and hashes: a bundle travels to browsers and caches, and a corrupted or
mismatched file must be caught with a message that says which file and what to do, before the
model produces garbage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FORMAT = "diffusion-explainer-bundle"
FORMAT_VERSION = 1
MODEL_COMPONENTS = ("text_encoder", "unet", "vae_decoder")
OP_GRAPHS = ("lincomb", "cfg_input", "guidance", "to_rgba")
# optional: present in bundles that carry them (the default model's), absent in others and in old bundles
OPTIONAL_GRAPHS = ("umap_project",)  # predicted x0 → 2-D position on the bundle's cached UMAP (export/umap.py)
ATTENTION_OUTPUT = "attention_probs"  # an optional UNet output: per-token cross-attention maps (export/attention.py)


class BundleError(Exception):
    """A bundle that cannot be used; the message is one line a user can act on."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fail(where: str, what: str):
    raise BundleError(f"bundle manifest: {where} {what}; re-export the bundle")


def _expect(value, kind, where: str):
    """One schema rule: value has the JSON type `kind` (dict, list, str, int, number, bool)."""
    ok = {
        "dict": isinstance(value, dict),
        "list": isinstance(value, list),
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        _fail(where, f"should be {'an' if kind == 'int' else 'a'} {kind}, not {type(value).__name__}")
    return value


def _field(obj: dict, key: str, kind: str, where: str):
    if key not in obj:
        _fail(f"{where}.{key}", "is missing")
    return _expect(obj[key], kind, f"{where}.{key}")


def _pair(obj: dict, key: str, where: str) -> None:
    v = _field(obj, key, "list", where)
    if len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= 65536 for x in v):
        _fail(f"{where}.{key}", "should be two positive whole numbers")


def safe_relpath(rel: str, where: str = "file") -> str:
    """A bundle-relative path that cannot leave the bundle: no absolute path, drive, backslash, '..' or NUL."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel or rel.startswith("/") or ":" in rel.split("/")[0]:
        raise BundleError(f"bundle manifest names a {where} outside the bundle ({rel!r}); refusing it")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BundleError(f"bundle manifest names a {where} outside the bundle ({rel!r}); refusing it")
    return rel


def check_manifest(manifest) -> dict:
    """Validate the manifest against the bundle schema (shape, types, paths, version); returns it.

    The one schema for both sides: the page's worker calls this (in Pyodide) on manifest.json before
    anything reads a field, and the native runtime calls it in Bundle.from_dir."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError("not a diffusion-explainer bundle: manifest.json lacks format='diffusion-explainer-bundle'")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"bundle format version {version!r} is not supported by this runtime (expects {FORMAT_VERSION}); re-export the bundle"
        )
    for key in ("model", "components", "files", "tokenizer", "scheduler"):
        if key not in manifest:
            raise BundleError(f"bundle manifest is missing '{key}'; re-export the bundle")
    model = _expect(manifest["model"], "dict", "model")
    _pair(model, "image_size", "model")
    _pair(model, "latent_size", "model")
    if _field(model, "latent_channels", "int", "model") < 1:
        _fail("model.latent_channels", "should be ≥ 1")
    _field(model, "vae_scaling_factor", "number", "model")
    if model["vae_scaling_factor"] == 0:
        _fail("model.vae_scaling_factor", "should not be 0")
    files = _expect(manifest["files"], "dict", "files")
    for rel, info in files.items():
        safe_relpath(rel)
        _expect(info, "dict", f"files[{rel!r}]")
        if _field(info, "bytes", "int", f"files[{rel!r}]") < 0:
            _fail(f"files[{rel!r}].bytes", "should be ≥ 0")
        sha = _field(info, "sha256", "str", f"files[{rel!r}]")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            _fail(f"files[{rel!r}].sha256", "should be 64 hex digits")
    comps = _expect(manifest["components"], "dict", "components")
    for name in MODEL_COMPONENTS + OP_GRAPHS:
        comp = comps.get(name)
        if not comp or not isinstance(comp, dict) or not comp.get("files"):
            raise BundleError(f"bundle manifest has no component '{name}'; re-export the bundle")
    for name, comp in comps.items():
        _expect(comp, "dict", f"components.{name}")
        for f in _field(comp, "files", "list", f"components.{name}"):
            safe_relpath(f)
            if f not in files:
                raise BundleError(f"bundle manifest lists {f} for {name} but not in its file table; re-export the bundle")
        for io in ("inputs", "outputs"):
            for spec in _expect(comp.get(io, []), "list", f"components.{name}.{io}"):
                _expect(spec, "dict", f"components.{name}.{io}[]")
                _field(spec, "name", "str", f"components.{name}.{io}[]")
                _field(spec, "dtype", "str", f"components.{name}.{io}[]")
    terms = comps["lincomb"].get("terms")
    if isinstance(terms, bool) or not isinstance(terms, int) or terms < 2:
        raise BundleError(
            "bundle manifest's lincomb component lacks its 'terms' limit (a whole number ≥ 2); re-export the bundle"
        )
    tok = _expect(manifest["tokenizer"], "dict", "tokenizer")
    tf = _field(tok, "files", "dict", "tokenizer")
    for key in ("vocab", "merges"):
        rel = _field(tf, key, "str", "tokenizer.files")
        safe_relpath(rel)
        if rel not in files:
            _fail(f"tokenizer.files.{key}", "is not in the file table")
    if not 2 <= _field(tok, "max_length", "int", "tokenizer") <= 4096:
        _fail("tokenizer.max_length", "should be from 2 to 4096")
    sched = _expect(manifest["scheduler"], "dict", "scheduler")
    _field(sched, "config", "dict", "scheduler")
    _field(sched, "default", "str", "scheduler")
    about = manifest.get("about", {})
    if about is not None:
        _expect(about, "dict", "about")
        for key, kind in (("description", "str"), ("examples", "list"), ("vocabulary", "dict"), ("guidance", "number")):
            if key in about:
                _expect(about[key], kind, f"about.{key}")
    return manifest


def check_manifest_json(text: str) -> dict:
    """manifest.json's text → the checked manifest, or one BundleError line (the page's entry point)."""
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BundleError(f"manifest.json is not valid JSON ({str(e)[:120]}); re-export the bundle") from None
    return check_manifest(manifest)


@dataclass
class Bundle:
    manifest: dict
    read_text: Callable[[str], str]
    location: str = ""

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    def component(self, name: str) -> dict:
        return self.manifest["components"][name]

    def input_dtype(self, component: str, input_name: str) -> str:
        for spec in self.component(component)["inputs"]:
            if spec["name"] == input_name:
                return spec["dtype"]
        raise BundleError(f"component {component} has no input {input_name!r}; re-export the bundle")

    @classmethod
    def from_dir(cls, path, verify: bool = True) -> Bundle:
        """Open a bundle folder; with verify, every file's size and sha256 are checked."""
        root = Path(path)
        mpath = root / "manifest.json"
        if not mpath.is_file():
            raise BundleError(f"{root} is not a bundle: no manifest.json (export one with `diffusion-explainer export`)")
        try:
            manifest = check_manifest_json(mpath.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise BundleError(f"{mpath} is not UTF-8 text; re-export the bundle") from None
        real_root = root.resolve()
        for rel in manifest["files"]:
            target = (root / rel).resolve()
            if target != real_root and real_root not in target.parents:  # a symlink pointing out
                raise BundleError(f"bundle file {rel} resolves outside the bundle ({target}); refusing it")
        if verify:
            for rel, info in manifest["files"].items():
                verify_file(root / rel, rel, info)
        return cls(manifest, lambda rel: (root / rel).read_text(encoding="utf-8"), str(root))


def verify_file(path: Path, rel: str, info: dict) -> None:
    if not path.is_file():
        raise BundleError(f"bundle file {rel} is missing; re-export or re-download the bundle")
    size = path.stat().st_size
    if size != info["bytes"]:
        raise BundleError(
            f"bundle file {rel} is corrupted: {size} bytes, manifest says {info['bytes']}; re-export or re-download the bundle"
        )
    digest = sha256_file(path)
    if digest != info["sha256"]:
        raise BundleError(
            f"bundle file {rel} is corrupted: sha256 {digest[:12]}… does not match the manifest's {info['sha256'][:12]}…; re-export or re-download the bundle"
        )

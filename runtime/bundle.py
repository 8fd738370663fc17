"""The bundle: the contract between export/ and runtime/ (see manifest.json in any bundle).

Why a manifest with sizes and hashes: a bundle travels to browsers and caches, and a corrupted or
mismatched file must be caught with a message that says which file and what to do, before the
model produces garbage.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

FORMAT = "diffusion-explainer-bundle"
FORMAT_VERSION = 1
MODEL_COMPONENTS = ("text_encoder", "unet", "vae_decoder")
OP_GRAPHS = ("lincomb", "cfg_input", "guidance", "to_rgba")


class BundleError(Exception):
    """A bundle that cannot be used; the message is one line a user can act on."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_manifest(manifest: dict) -> dict:
    """Validate the manifest's shape and version; returns it."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError("not a diffusion-explainer bundle: manifest.json lacks format='diffusion-explainer-bundle'")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"bundle format version {version!r} is not supported by this runtime (expects {FORMAT_VERSION}); re-export the bundle")
    for key in ("model", "components", "files", "tokenizer", "scheduler"):
        if key not in manifest:
            raise BundleError(f"bundle manifest is missing '{key}'; re-export the bundle")
    for name in MODEL_COMPONENTS + OP_GRAPHS:
        comp = manifest["components"].get(name)
        if not comp or not comp.get("files"):
            raise BundleError(f"bundle manifest has no component '{name}'; re-export the bundle")
        for f in comp["files"]:
            if f not in manifest["files"]:
                raise BundleError(f"bundle manifest lists {f} for {name} but not in its file table; re-export the bundle")
    terms = manifest["components"]["lincomb"].get("terms")
    if isinstance(terms, bool) or not isinstance(terms, int) or terms < 2:
        raise BundleError("bundle manifest's lincomb component lacks its 'terms' limit (a whole number ≥ 2); re-export the bundle")
    return manifest


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
    def from_dir(cls, path, verify: bool = True) -> "Bundle":
        """Open a bundle folder; with verify, every file's size and sha256 are checked."""
        root = Path(path)
        mpath = root / "manifest.json"
        if not mpath.is_file():
            raise BundleError(f"{root} is not a bundle: no manifest.json (export one with `diffusion-explainer export`)")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise BundleError(f"{mpath} is not valid JSON ({e}); re-export the bundle") from None
        check_manifest(manifest)
        if verify:
            for rel, info in manifest["files"].items():
                verify_file(root / rel, rel, info)
        return cls(manifest, lambda rel: (root / rel).read_text(encoding="utf-8"), str(root))


def verify_file(path: Path, rel: str, info: dict) -> None:
    if not path.is_file():
        raise BundleError(f"bundle file {rel} is missing; re-export or re-download the bundle")
    size = path.stat().st_size
    if size != info["bytes"]:
        raise BundleError(f"bundle file {rel} is corrupted: {size} bytes, manifest says {info['bytes']}; re-export or re-download the bundle")
    digest = sha256_file(path)
    if digest != info["sha256"]:
        raise BundleError(f"bundle file {rel} is corrupted: sha256 {digest[:12]}… does not match the manifest's {info['sha256'][:12]}…; re-export or re-download the bundle")

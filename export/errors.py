"""The exporter's refusals: one-line errors a user can act on."""

from __future__ import annotations

SUPPORTED = (
    "Stable Diffusion 1.x / 2.x (incl. SD-Turbo): a diffusers StableDiffusionPipeline folder or a single .safetensors/.ckpt file"
)


class ExportError(Exception):
    """An export that cannot proceed; the message is one line."""


class UnsupportedCheckpoint(ExportError):
    pass

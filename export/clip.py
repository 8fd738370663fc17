"""The optional CLIP image tower (a model folder's clip_image/) as clip_image.onnx: RGBA images × text states → cosine similarities."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from .errors import ExportError
from .verify import DEFAULT_TOLERANCE

COMPONENT = "clip_image"
OPSET = 18


def image_tower(channels: list[int], dim: int):
    """The tower the config describes (train/models.py's ImageEncoder layout, same parameter names):
    stride-2 conv blocks with GroupNorm + SiLU, global average pool, a linear head. Built here from the
    config so that export/ reads a model folder without importing train/."""
    import torch
    from torch import nn

    layers = []
    for a, b in zip(channels, channels[1:]):
        layers += [
            nn.Conv2d(a, b, 3, stride=2, padding=1),
            nn.GroupNorm(8, b),
            nn.SiLU(),
            nn.Conv2d(b, b, 3, padding=1),
            nn.GroupNorm(8, b),
            nn.SiLU(),
        ]

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], dim))

        def forward(self, x):
            return self.net(x)

    return Tower()


def _pixels(image_u8):
    """uint8 [N,H,W,≥3] → float NCHW in [-1, 1], the tower's input (config pixel_normalization)."""
    return image_u8[..., :3].permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def load_clip_image(folder: Path):
    """(image tower, text projection, config) in float32 and eval mode, from a clip_image folder."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if cfg.get("architecture") != "ImageEncoder":
        raise ExportError(f"{folder}: unknown clip_image architecture {cfg.get('architecture')!r} (expected 'ImageEncoder')")
    weights = load_file(str(folder / cfg.get("weights", "model.safetensors")))
    tower = image_tower(cfg.get("channels", [3, 32, 64, 128, 256]), cfg["embed_dim"])
    tower.load_state_dict({k[len("image.") :]: v.float() for k, v in weights.items() if k.startswith("image.")})
    proj = torch.nn.Linear(cfg["text_hidden_size"], cfg["embed_dim"], bias=False)
    proj.load_state_dict({"weight": weights["proj.weight"].float()})
    return tower.eval(), proj.eval(), cfg


def similarity_module(tower, proj):
    """The graph's computation as a torch module: (uint8 [N,H,W,4], float [M,L,d], int64 [M]) → float [N,M]."""
    import torch
    import torch.nn.functional as F

    class ClipSimilarity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tower, self.proj = tower, proj

        def forward(self, image, text_states, eos_index):
            x = _pixels(image)
            v = F.normalize(self.tower(x), dim=-1)
            idx = eos_index.view(-1, 1, 1).expand(-1, 1, text_states.shape[2])
            pooled = text_states.gather(1, idx).squeeze(1)  # the pooled output: the state at the eos token
            t = F.normalize(self.proj(pooled), dim=-1)
            return v @ t.transpose(0, 1)

    return ClipSimilarity().eval()


def reference(tower, proj, image_u8, text_states, eos_index):
    """The same similarities computed the way training did (numpy in, numpy out), for verification."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        v = F.normalize(tower(_pixels(torch.from_numpy(np.ascontiguousarray(image_u8)))), dim=-1)
        states = torch.from_numpy(text_states)
        pooled = states[torch.arange(states.shape[0]), torch.from_numpy(eos_index)]
        t = F.normalize(proj(pooled), dim=-1)
        return (v @ t.T).numpy()


def export_clip(
    model_dir: Path, out_dir: Path, text_hidden: int, *, tolerance: float = DEFAULT_TOLERANCE, seed: int = 0
) -> dict | None:
    """Write out_dir/clip_image.onnx when model_dir has a clip_image folder; returns the component's
    manifest entry (files, precision, inputs, outputs, verification, image_size, logit_scale), else None."""
    folder = Path(model_dir) / COMPONENT
    if not (folder / "config.json").is_file():
        return None
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from .manifest import io_specs

    tower, proj, cfg = load_clip_image(folder)
    if cfg["text_hidden_size"] != text_hidden:
        raise ExportError(
            f"{folder} projects text states of width {cfg['text_hidden_size']}, but the text encoder's are {text_hidden} wide; "
            "retrain it for this model (diffusion-explainer train clip_image)"
        )
    size = int(cfg["image_size"])
    rel = f"{COMPONENT}.onnx"
    path = Path(out_dir) / rel
    module = similarity_module(tower, proj)
    example = (torch.zeros(1, size, size, 4, dtype=torch.uint8), torch.zeros(2, 77, text_hidden), torch.tensor([3, 5]))
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript's exporter (torch.onnx's legacy path) is deprecated, not gone: it traces this small module exactly
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=["image", "text_states", "eos_index"],
            output_names=["similarity"],
            dynamic_axes={
                "image": {0: "batch"},
                "text_states": {0: "prompts", 1: "sequence"},
                "eos_index": {0: "prompts"},
                "similarity": {0: "batch", 1: "prompts"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(str(path))
    model.doc_string = (
        "CLIP similarity: cosine of the image tower's embedding of RGBA uint8 images (pixels / 127.5 - 1, alpha ignored) "
        "and the projected text state at each prompt's eos token"
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))

    # verification: ONNX vs the PyTorch modules, on random images and text states
    rng = np.random.default_rng(seed)
    feeds = {
        "image": rng.integers(0, 256, (3, size, size, 4), dtype=np.uint8),
        "text_states": rng.standard_normal((4, 77, text_hidden), dtype=np.float32),
        "eos_index": rng.integers(0, 77, 4).astype(np.int64),
    }
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ref = reference(tower, proj, feeds["image"], feeds["text_states"], feeds["eos_index"])
    err = float(np.abs(got - ref).max())
    ref_max = float(np.abs(ref).max())
    relative = err / max(1.0, ref_max)
    if relative > tolerance:
        raise ExportError(
            f"{COMPONENT} differs from PyTorch by {err:.3g} (reference max {ref_max:.3g}), above tolerance {tolerance}; the export is not trustworthy"
        )
    inputs, outputs = io_specs(model)
    return {
        "files": [rel],
        "precision": "fp32",
        "inputs": inputs,
        "outputs": outputs,
        "verification": {
            "max_abs_error": err,
            "max_abs_reference": ref_max,
            "relative": relative,
            "tolerance": tolerance,
            "against": "PyTorch (the image tower + projection) on random inputs",
        },
        "image_size": [size, size],
        "logit_scale": float(cfg.get("logit_scale", 100.0)),
    }

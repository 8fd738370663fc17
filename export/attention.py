"""The UNet with its cross-attention maps as a second output (attention_probs: per token, heads averaged, layers summed at latent size)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from runtime.bundle import ATTENTION_OUTPUT

from .errors import ExportError
from .verify import DEFAULT_TOLERANCE

OPSET = 18
MAP_TOLERANCE = 1e-4  # max abs error of the maps (sums of probabilities, O(1)) vs the PyTorch aggregation


class _Collector:
    """Shared by the processors of one forward: the latent size, the current layer's size (set by a
    pre-hook on its Transformer2DModel, because attn2 only sees flattened tokens) and the running sum."""

    def __init__(self):
        self.size = None  # latent (h, w)
        self.layer = None  # the current transformer's (h_l, w_l)
        self.total = None  # [1, L, h, w]


class MapProcessor:
    """diffusers' AttnProcessor (explicit softmax probabilities) that also adds this layer's map of the
    conditional row (the batch's last) to the collector: mean over heads → [L, h_l, w_l] → bilinear to latent size."""

    def __init__(self, collector: _Collector):
        self.c = collector

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        import torch
        import torch.nn.functional as F

        if attn.spatial_norm is not None or hidden_states.ndim != 3 or encoder_hidden_states is None:
            raise ExportError("attention maps: expected SD's cross-attention (3-D hidden states with text states)")
        residual = hidden_states
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        query = attn.head_to_batch_dim(query)
        probs = attn.get_attention_scores(query, key, attention_mask)  # [B·heads, h_l·w_l, L], batch-major

        h_l, w_l = self.c.layer
        cond = probs.reshape(-1, attn.heads, probs.shape[1], probs.shape[2])[-1]  # the conditional row: [heads, hw, L]
        layer = cond.mean(0).transpose(0, 1).reshape(1, -1, h_l, w_l)
        layer = F.interpolate(layer, size=self.c.size, mode="bilinear", align_corners=False)
        self.c.total = layer if self.c.total is None else self.c.total + layer

        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _cross_attention_names(unet) -> list[str]:
    names = [k for k in unet.attn_processors if k.endswith("attn2.processor")]
    if not names:
        raise ExportError("this UNet has no cross-attention layers (attn2); there are no attention maps to export")
    return names


def _with_processors(unet, make_attn2):
    """Every attn2 gets make_attn2(name); every other attention diffusers' plain AttnProcessor."""
    from diffusers.models.attention_processor import AttnProcessor

    unet.set_attn_processor(
        {k: (make_attn2(k) if k.endswith("attn2.processor") else AttnProcessor()) for k in unet.attn_processors}
    )


def attention_module(unet):
    """A torch module: (sample, timestep, encoder_hidden_states) → (out_sample, attention_probs [L, h, w])."""
    import torch
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    collector = _Collector()
    _cross_attention_names(unet)
    _with_processors(unet, lambda _name: MapProcessor(collector))
    for m in unet.modules():
        if isinstance(m, Transformer2DModel):  # its input is still [B, C, h_l, w_l]: record the layer size
            m.register_forward_pre_hook(
                lambda _m, args, kwargs: (
                    setattr(collector, "layer", tuple(args[0].shape[-2:]))
                    if args
                    else setattr(collector, "layer", tuple(kwargs["hidden_states"].shape[-2:]))
                ),
                with_kwargs=True,
            )

    class UNetWithAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            collector.size, collector.total = tuple(sample.shape[-2:]), None
            out = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states).sample
            maps, collector.total = collector.total[0], None
            return out, maps

    return UNetWithAttention().eval()


def reference_maps(unet, sample, timestep, encoder_hidden_states):
    """The aggregation done after the fact in PyTorch (float64), from every attn2's full probabilities
    recorded by a plain recording processor: for verification of the graph's output. Returns [L, h, w]."""
    import torch
    import torch.nn.functional as F
    from diffusers.models.attention_processor import AttnProcessor

    recorded = []

    class Recording(AttnProcessor):
        def __init__(self, name):
            self.name = name

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *a, **k):
            get = attn.get_attention_scores

            def keep(q, kk, m=None):
                p = get(q, kk, m)
                recorded.append((attn.heads, p.detach().double()))
                return p

            attn.get_attention_scores = keep
            try:
                return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
            finally:
                del attn.get_attention_scores

    _with_processors(unet, Recording)
    h, w = sample.shape[-2:]
    with torch.no_grad():
        unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)
    total = 0
    for heads, p in recorded:
        hw = p.shape[1]
        f = round((h * w / hw) ** 0.5)  # each UNet level halves the latent (ceil), see Downsample2D
        h_l, w_l = -(-h // f), -(-w // f)
        if h_l * w_l != hw:
            raise ExportError(f"attention maps: cannot place a layer of {hw} positions on a {h}×{w} latent")
        m = p.reshape(-1, heads, hw, p.shape[2]).mean(1)  # [B, hw, L]
        m = m.permute(0, 2, 1).reshape(m.shape[0], -1, h_l, w_l)
        total = total + F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    return total[1].float().numpy(), len(recorded)  # batch row 1: the conditional branch


def _remove_unet_files(out_dir: Path) -> None:
    for p in out_dir.iterdir():
        if p.name == "unet.onnx" or p.name.startswith("unet.onnx.data"):
            p.unlink()


def export_unet_with_attention(
    src: Path, out_dir: Path, facts: dict, chunk_bytes: int, *, seed: int = 0, tolerance: float = DEFAULT_TOLERANCE
) -> dict:
    """Write out_dir/unet.onnx (replacing the plain one; weights chunked when big) whose outputs are
    out_sample and attention_probs; verify both against PyTorch. Returns {"files", "verification"}."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from diffusers import UNet2DConditionModel

    from .onnxfiles import save_model

    src, out_dir = Path(src), Path(out_dir)
    h, w = facts["latent_size"]
    n, d = facts["text_max_length"], facts["text_hidden_size"]
    unet = UNet2DConditionModel.from_pretrained(src / "unet").eval()
    layers = len(_cross_attention_names(unet))
    module = attention_module(unet)
    example = (torch.zeros(2, 4, h, w), torch.tensor(500.0), torch.zeros(2, n, d))
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        path = Path(tmp) / "unet.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # TorchScript's exporter (the legacy path, as export/clip.py): traces diffusers' UNet as optimum does
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                str(path),
                input_names=["sample", "timestep", "encoder_hidden_states"],
                output_names=["out_sample", ATTENTION_OUTPUT],
                dynamic_axes={
                    "sample": {0: "batch_size", 2: "height", 3: "width"},
                    "encoder_hidden_states": {0: "batch_size", 1: "sequence_length"},
                    "out_sample": {0: "batch_size", 2: "height", 3: "width"},
                    ATTENTION_OUTPUT: {0: "sequence_length", 1: "height", 2: "width"},
                },
                opset_version=OPSET,
                dynamo=False,
            )
        model = onnx.load(str(path), load_external_data=True)
        model.doc_string = (
            f"SD UNet; {ATTENTION_OUTPUT}: the conditional row's cross-attention probabilities per text token, "
            f"mean over heads, bilinearly upsampled to the latent size and summed over the {layers} attn2 layers (DAAM)"
        )
        _remove_unet_files(out_dir)
        files = save_model(model, out_dir / "unet.onnx", chunk_bytes)
    del model

    # verification: the graph vs the plain UNet (out_sample) and vs the after-the-fact aggregation (maps)
    rng = np.random.default_rng(seed)
    feeds = {
        "sample": rng.standard_normal((2, 4, h, w), dtype=np.float32),
        "timestep": np.array(500.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, n, d), dtype=np.float32),
    }
    got_sample, got_maps = ort.InferenceSession(str(out_dir / "unet.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    plain = UNet2DConditionModel.from_pretrained(src / "unet").eval()
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        ref_sample = plain(t["sample"], t["timestep"], encoder_hidden_states=t["encoder_hidden_states"]).sample.numpy()
    ref_maps, recorded = reference_maps(plain, t["sample"], t["timestep"], t["encoder_hidden_states"])
    if recorded != layers or got_maps.shape != (n, h, w):
        raise ExportError(
            f"attention maps: expected {layers} layers → [{n}, {h}, {w}], got {recorded} layers → {list(got_maps.shape)}"
        )
    err = float(np.abs(got_sample - ref_sample).max())
    ref_max = float(np.abs(ref_sample).max())
    map_err = float(np.abs(got_maps - ref_maps).max())
    verification = {
        "max_abs_error": err,
        "max_abs_reference": ref_max,
        "relative": err / max(1.0, ref_max),
        "tolerance": tolerance,
        "against": "PyTorch (diffusers UNet2DConditionModel, default processors) on random inputs",
        "attention": {
            "max_abs_error": map_err,
            "max_abs_reference": float(np.abs(ref_maps).max()),
            "tolerance": MAP_TOLERANCE,
            "layers": layers,
            "against": "every attn2's softmax probabilities recorded in PyTorch, aggregated in float64",
        },
    }
    if verification["relative"] > tolerance:
        raise ExportError(
            f"unet (with attention) differs from PyTorch by {err:.3g} (reference max {ref_max:.3g}), above tolerance {tolerance}"
        )
    if map_err > MAP_TOLERANCE:
        raise ExportError(
            f"unet's {ATTENTION_OUTPUT} differ from the PyTorch aggregation by {map_err:.3g}, above {MAP_TOLERANCE}"
        )
    return {"files": files, "verification": verification}


def update_manifest(bundle_dir: Path, result: dict) -> dict:
    """Point an existing bundle's manifest at the new unet files (components.unet files/outputs/verification,
    the files table with sizes and hashes). For bundles exported before this option, and for tests."""
    import json

    import onnx

    from runtime.bundle import sha256_file

    from .manifest import io_specs

    bundle_dir = Path(bundle_dir)
    path = bundle_dir / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    unet = manifest["components"]["unet"]
    for rel in unet["files"]:
        manifest["files"].pop(rel, None)
    inputs, outputs = io_specs(onnx.load(str(bundle_dir / result["files"][0]), load_external_data=False))
    unet.update(
        {
            "files": result["files"],
            "inputs": inputs,
            "outputs": outputs,
            "verification": {**unet.get("verification", {}), **result["verification"]},
        }
    )
    for rel in result["files"]:
        manifest["files"][rel] = {"bytes": (bundle_dir / rel).stat().st_size, "sha256": sha256_file(bundle_dir / rel)}
    path.write_text(json.dumps(manifest, indent=1))
    return manifest


def add_attention(bundle_dir: Path, src: Path, chunk_bytes: int | None = None) -> dict:
    """Re-export an fp32 bundle's UNet from its source pipeline with attention maps, in place."""
    from .checkpoint import inspect_checkpoint
    from .onnxfiles import CHUNK_BYTES

    result = export_unet_with_attention(Path(src), Path(bundle_dir), inspect_checkpoint(src), chunk_bytes or CHUNK_BYTES)
    return update_manifest(bundle_dir, result)


__all__ = ["export_unet_with_attention", "attention_module", "reference_maps", "update_manifest", "add_attention"]

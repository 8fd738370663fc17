"""Run each exported ONNX component and its PyTorch original on the same inputs, and write down the error."""

from __future__ import annotations

from pathlib import Path

DEFAULT_TOLERANCE = 1e-3  # max abs error relative to max(1, max |reference|), fp32


def random_feeds(facts: dict, vocab_size: int, seed: int = 0) -> dict:
    """The same random inputs for every comparison (PyTorch vs ONNX, fp32 vs quantized)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = facts["latent_size"]
    n = facts["text_max_length"]
    return {
        "text_encoder": {"input_ids": rng.integers(0, vocab_size, (2, n)).astype(np.int64)},
        "unet": {
            "sample": rng.standard_normal((2, 4, h, w), dtype=np.float32),
            "timestep": np.array(500.0, dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((2, n, facts["text_hidden_size"]), dtype=np.float32),
        },
        "vae_decoder": {"latent_sample": rng.standard_normal((1, 4, h, w), dtype=np.float32)},
    }


def verify(src: Path, bundle_dir: Path, files: dict, facts: dict, seed: int = 0) -> dict:
    """Run each exported component in onnxruntime and in PyTorch on the same random inputs."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    results = {}

    def compare(name, feeds, torch_out):
        sess = ort.InferenceSession(str(bundle_dir / files[name][0]), providers=["CPUExecutionProvider"])
        got = sess.run(None, feeds)[0]
        ref = torch_out.detach().float().numpy()
        err = float(np.abs(got - ref).max())
        scale = max(1.0, float(np.abs(ref).max()))
        results[name] = {"max_abs_error": err, "max_abs_reference": float(np.abs(ref).max()), "relative": err / scale}

    t = torch.from_numpy
    with torch.no_grad():
        text = CLIPTextModel.from_pretrained(src / "text_encoder").eval()
        feeds = random_feeds(facts, text.config.vocab_size, seed)
        f = feeds["text_encoder"]
        compare("text_encoder", f, text(t(f["input_ids"])).last_hidden_state)
        del text
        unet = UNet2DConditionModel.from_pretrained(src / "unet").eval()
        f = feeds["unet"]
        compare("unet", f, unet(t(f["sample"]), torch.tensor(500.0), encoder_hidden_states=t(f["encoder_hidden_states"])).sample)
        del unet
        vae = AutoencoderKL.from_pretrained(src / "vae").eval()
        f = feeds["vae_decoder"]
        compare("vae_decoder", f, vae.decode(t(f["latent_sample"])).sample)
    return results

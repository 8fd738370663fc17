"""Stable Diffusion pipelines with random weights, built offline from configs.

Why: no real SD weights can reach these machines, yet the exporter and runtime must be proven on
SD's real classes. `tiny` is the test fixture (seconds to build and export); the real
architectures' configs (SD 1.5, SD 2.x) prove the exporter at full scale.
"""

from __future__ import annotations

from pathlib import Path

TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "clip_tokenizer"

SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    clip_sample=False,
    prediction_type="epsilon",
)


def _tokenizer(pad_token: str = "<|endoftext|>"):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), model_max_length=77, pad_token=pad_token
    )


def tiny(out_dir: Path, seed: int = 0, prediction_type: str = "epsilon", pad_token: str = "<|endoftext|>") -> Path:
    """A tiny SD pipeline (CLIP hidden 32, UNet with cross-attention, 4-channel AutoencoderKL).

    prediction_type="v_prediction", pad_token="!" give SD 2.x's conventions."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=16,
        sample_size=16,
    )
    # random weights give tiny outputs; scale the last layers so images and noise predictions are O(1)
    with torch.no_grad():
        unet.conv_out.weight.mul_(20.0)
        vae.decoder.conv_out.weight.mul_(10.0)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=_tokenizer(pad_token),
        unet=unet,
        scheduler=PNDMScheduler.from_config({**SD_SCHEDULER, "prediction_type": prediction_type}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)

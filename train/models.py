"""The default model's architectures: Stable Diffusion's own classes, only smaller.

Why SD's classes: every view of the explainer then shows what really happens inside Stable Diffusion
(CLIPTextModel → UNet2DConditionModel with cross-attention → AutoencoderKL), at a size this 2-core
machine can train in under three hours.
"""

from __future__ import annotations

import torch
from torch import nn

TEXT_HIDDEN = 128
LATENT_CHANNELS = 4
IMAGE_SIZE = 64
LATENT_SIZE = 16  # VAE downsamples by 4 here (SD: by 8 on 512 px); 4 channels as in SD

# SD 1.x's noise schedule. The model ships DDIM as its sampler (as SD 2.x does) rather than SD 1.x's
# PNDM: with this small model PNDM's 4-step extrapolation diverges by guidance 7.5 (evaluation/
# has both tables), while DDIM, DPM-Solver++ and Euler ancestral all hold at SD's default 7.5.
SCHEDULER_CLASS = "DDIMScheduler"
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    clip_sample=False,
    prediction_type="epsilon",
    trained_betas=None,
    timestep_spacing="leading",
)


def text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=TEXT_HIDDEN,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(cfg)


class ImageEncoder(nn.Module):
    """CLIP's image tower, shrunk to a small CNN: only used to train the text encoder contrastively."""

    def __init__(self, dim: int = TEXT_HIDDEN):
        super().__init__()
        chans = [3, 32, 64, 128, 256]
        layers = []
        for a, b in zip(chans, chans[1:]):
            layers += [
                nn.Conv2d(a, b, 3, stride=2, padding=1),
                nn.GroupNorm(8, b),
                nn.SiLU(),
                nn.Conv2d(b, b, 3, padding=1),
                nn.GroupNorm(8, b),
                nn.SiLU(),
            ]
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, dim))

    def forward(self, x):
        return self.net(x)


def vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        norm_num_groups=32,
    )


def unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        norm_num_groups=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
    )


class Judge(nn.Module):
    """The independent judge: names the object(s) and the background of a real scene image."""

    def __init__(self, n_objects: int, n_backgrounds: int):
        super().__init__()
        chans = [3, 32, 64, 128]
        layers = []
        for a, b in zip(chans, chans[1:]):
            layers += [
                nn.Conv2d(a, b, 3, padding=1),
                nn.BatchNorm2d(b),
                nn.ReLU(),
                nn.Conv2d(b, b, 3, padding=1),
                nn.BatchNorm2d(b),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.objects = nn.Linear(128, n_objects)
        self.background = nn.Linear(128, n_backgrounds)

    def forward(self, x):
        h = self.features(x)
        return self.objects(h), self.background(h)


def to_tensor(images_uint8) -> torch.Tensor:
    """uint8 NHWC → float NCHW in [-1, 1], SD's image range."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

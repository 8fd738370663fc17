"""The evaluation's settings and their command-line flags, apart from the evaluation so that the CLI stays light to import."""

from __future__ import annotations

from pathlib import Path

GUIDANCES = (1.0, 3.0, 7.5)  # the default rows (round 1 also had 0 and 12: --guidances 0,1,3,7.5,12)
GUIDANCE_SEEDS = "1=4"  # 8 seeds per prompt at 3 and 7.5 (--seeds), 4 at 1 (round 2: 4, 4 and 2)
# runtime.schedulers' names → diffusers' classes (the judge scores diffusers' own sampling); a test keeps them in step
SCHEDULERS = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
}
WORD_GUIDANCE = 3.0  # the model card's default (explainer.json "guidance")
OPTIONS = {  # main's settings beyond --model/--seeds/--steps/--scheduler/--out, with their defaults
    "quick": False,
    "guidances": GUIDANCES,
    "guidance_seeds": GUIDANCE_SEEDS,
    "diversity_seeds": 16,
    "diversity_prompts": 12,
    "word_prompts": 9,
    "word_seeds": 8,
    "word_guidance": WORD_GUIDANCE,
}
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"


def add_arguments(ap) -> None:
    """The evaluation's flags, for `diffusion-explainer evaluate` and `python -m train.evaluate` alike."""
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="a diffusers folder")
    ap.add_argument("--seeds", type=int, default=8, help="seeds per held-out prompt at each guidance")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument(
        "--scheduler", choices=list(SCHEDULERS), help="sample with this scheduler instead of the model's own (to compare)"
    )
    ap.add_argument("--out", default="evaluation")
    ap.add_argument("--quick", action="store_true", help="a small smoke run: few prompts and seeds, 10 steps")
    ap.add_argument(
        "--guidances",
        type=lambda s: tuple(float(g) for g in s.split(",")),
        default=GUIDANCES,
        help="guidance scales, one table row each (default 1,3,7.5; 3 is always sampled for seed diversity)",
    )
    ap.add_argument(
        "--guidance-seeds",
        default=GUIDANCE_SEEDS,
        help=f"per-guidance seed counts overriding --seeds, e.g. 0=2,12=2 (default {GUIDANCE_SEEDS}; '' for none)",
    )
    ap.add_argument("--diversity-seeds", type=int, default=OPTIONS["diversity_seeds"])
    ap.add_argument(
        "--diversity-prompts",
        type=int,
        default=OPTIONS["diversity_prompts"],
        help="held-out single-object prompts for seed diversity and the inside-the-frame figure (every 4th of 48)",
    )
    ap.add_argument("--word-prompts", type=int, default=OPTIONS["word_prompts"], help="prompts per word kind (position, size)")
    ap.add_argument("--word-seeds", type=int, default=OPTIONS["word_seeds"])
    ap.add_argument("--word-guidance", type=float, default=OPTIONS["word_guidance"])
    ap.add_argument(
        "--attention",
        metavar="BUNDLE",
        help="also measure how well the cross-attention maps locate objects "
        "(mIoU) on BUNDLE, a bundle exported with attention maps (e.g. bundles/default)",
    )
    ap.add_argument("--attention-only", action="store_true", help="with --attention: skip the judge's evaluation")

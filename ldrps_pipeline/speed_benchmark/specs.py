"""What the speed benchmark measures: the model sizes (SD 2.1-base, tiny), the step schedules and their
unguided and guided step counts, the random-weight pipelines, the test image, and the switches of torch's
backends that some rows turn on."""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ldrps_pipeline.alignment_ldrps import AlignmentModule
from ldrps_pipeline.demo_training.byte_tokenizer import byte_level_clip_tokenizer
from ldrps_pipeline.perceptual_ldrps import PerceptualFeatures
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline
from ldrps_pipeline.scheduling_ldrps import RecurrentPosteriorScheduler

PROMPT = "a photo of a landscape"
"""The prompt of every restoration (no captioner: its cost is once per image and outside the loop)."""


@dataclass(frozen=True)
class Schedule:
    """A restoration's step plan: pass 0 of ``steps`` steps, then ``recurrences`` passes at ``strength``."""

    steps: int
    recurrences: int
    strength: float

    def label(self) -> str:
        """``"steps + recurrences x steps per recurrence"``, e.g. ``"450 + 2 x 225"``."""
        return f"{self.steps} + {self.recurrences} x {int(self.steps * self.strength)}"


PAPER_SCHEDULE = Schedule(steps=450, recurrences=2, strength=0.5)
"""The paper's schedule (450 + 2 x 225 steps)."""

_FAST = RecurrentPosteriorScheduler.from_preset("fast").config
FAST_SCHEDULE = Schedule(steps=_FAST.num_inference_steps, recurrences=_FAST.recurrences, strength=_FAST.strength)
"""The ``"fast"`` preset's schedule (50 + 1 x 25 steps)."""


@dataclass(frozen=True)
class StepCounts:
    """How many steps of a full restoration are unguided (``t`` at or above the gate) and guided."""

    unguided: int
    guided: int


def step_counts(pipe: LDRPSPipeline, posterior: RecurrentPosteriorScheduler, schedule: Schedule) -> StepCounts:
    """The exact unguided and guided step counts of ``schedule`` with ``pipe``'s DDIM scheduler."""
    passes = posterior.set_timesteps(schedule.steps, pipe.scheduler, schedule.recurrences, schedule.strength)
    guided = sum(posterior.guidance_enabled(t) for timesteps in passes for t in timesteps)
    return StepCounts(unguided=sum(map(len, passes)) - guided, guided=guided)


def measurement_steps(pipe: LDRPSPipeline, posterior: RecurrentPosteriorScheduler, unguided: int, guided: int) -> int:
    """The fewest DDIM steps whose single pass has at least ``unguided`` unguided and ``guided`` guided steps.

    Raises:
        ValueError: when no schedule of the scheduler's training timesteps has that many.
    """
    for steps in range(1, pipe.scheduler.config.num_train_timesteps + 1):
        counts = step_counts(pipe, posterior, Schedule(steps=steps, recurrences=0, strength=1.0))
        if counts.unguided >= unguided and counts.guided >= guided:
            return steps
    raise ValueError(f"no schedule has {unguided} unguided and {guided} guided steps")


@dataclass(frozen=True)
class ModelSpec:
    """The sizes of the benchmarked components and images.

    Args:
        unet: ``UNet2DConditionModel`` keyword arguments.
        vae: ``AutoencoderKL`` keyword arguments.
        text_encoder: ``CLIPTextConfig`` keyword arguments.
        aligner_channels: hidden widths of the alignment module.
        perceptual_channels: widths of the two VGG blocks of the perceptual features.
        image_size: side of the square test image.
        large_image_size: side of the large square test image.
        unet_parameters: the expected UNet parameter count (checked within 1%), or ``None``.
    """

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    aligner_channels: tuple[int, ...]
    perceptual_channels: tuple[int, int]
    image_size: int
    large_image_size: int
    unet_parameters: int | None


# The token ids of the byte-level tokenizer: 512 <|startoftext|>, 513 <|endoftext|> (also padding).
_TOKEN_IDS = {"bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513, "vocab_size": 49408}

SD21_BASE = ModelSpec(
    unet={
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 1024,
        "attention_head_dim": (5, 10, 20, 20),
        "use_linear_projection": True,
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    },
    text_encoder={
        **_TOKEN_IDS,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 512,
    },
    aligner_channels=(64, 128, 256),
    perceptual_channels=(64, 128),
    image_size=512,
    large_image_size=1024,
    unet_parameters=865_910_724,
)
"""Stable Diffusion 2.1-base's architecture (the reference's prior) and the paper's alignment module."""

TINY = ModelSpec(
    unet={
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 16,
        "attention_head_dim": 4,
        "norm_num_groups": 4,
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (8, 16),
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 32,
    },
    text_encoder={
        **_TOKEN_IDS,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
    },
    aligner_channels=(8, 8, 8),
    perceptual_channels=(4, 8),
    image_size=32,
    large_image_size=64,
    unet_parameters=None,
)
"""Tiny components for a CPU check of the same code path."""


def build_pipeline(spec: ModelSpec, device: torch.device, seed: int = 0) -> LDRPSPipeline:
    """An :class:`LDRPSPipeline` of ``spec``'s sizes with random weights, in float32, built directly on ``device``.

    Raises:
        RuntimeError: when the UNet's parameter count is more than 1% off ``spec.unet_parameters``.
    """
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**spec.unet)
        vae = AutoencoderKL(**spec.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**spec.text_encoder))
        perceptual = PerceptualFeatures(channels=spec.perceptual_channels)
    if spec.unet_parameters is not None:
        count = sum(p.numel() for p in unet.parameters())
        if abs(count - spec.unet_parameters) > 0.01 * spec.unet_parameters:
            raise RuntimeError(f"the UNet has {count:,} parameters, expected about {spec.unet_parameters:,}")
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = LDRPSPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=byte_level_clip_tokenizer(),
        unet=unet.eval(),
        scheduler=scheduler,
        aligner=AlignmentModule(hidden_channels=spec.aligner_channels),
        # No warm-up of the alignment module: the benchmark's short schedules reach the guidance gate with
        # fewer alignment steps than a full run has, and would time a warm-up a full paper run never does.
        posterior_scheduler=RecurrentPosteriorScheduler(aligner_warmup_steps=0),
        perceptual=perceptual.eval(),
    ).to(device)  # the aligner template too, so that the execution device is the same whatever the order
    pipe.set_progress_bar_config(disable=True)
    return pipe


def variant(pipe: LDRPSPipeline, cls: type[LDRPSPipeline] = LDRPSPipeline, **replacements: Any) -> LDRPSPipeline:
    """A pipeline of class ``cls`` built by its constructor from ``pipe``'s components (the same modules), with
    some replaced."""
    other = cls(**{**pipe.components, **replacements})
    other.set_progress_bar_config(disable=True)
    return other


def smooth_image(size: int, seed: int = 0) -> torch.Tensor:
    """A random smooth RGB image (1, 3, size, size) in [0, 1]: bilinear upsampling of 8x8 random pixels."""
    coarse = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


@contextlib.contextmanager
def cudnn_autotuning() -> Iterator[None]:
    """``torch.backends.cudnn.benchmark = True`` inside the block, the previous value restored after it."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """float32 matrix products and cuDNN convolutions in full IEEE precision (TF32 off) inside the block, the
    previous settings restored after it (the ``allow_tf32`` flags, which every torch >= 2.4 has)."""
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous

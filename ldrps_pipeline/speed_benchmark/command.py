"""``ldrps-speed-benchmark``: seconds per image and peak memory of LD-RPS in several configurations, side by side.

Builds the real-size Stable Diffusion 2.1-base architecture (UNet ~866M parameters, the SD VAE, a
CLIP text encoder of SD 2.1's shape) from configs with random weights, so that it needs no download,
and restores one random smooth image in each configuration below, all in one run on one card, so
that every speed-up is a ratio measured on the same machine:

- ``reference``: the costs of the reference code (ALGORITHM.md, "Cost of the reference pattern"):
  float32 everything, the UNet called in batches of 2 rows (two calls per step instead of one; the
  reference calls it once per sample with its CFG pair, the same two batch-2 calls), and every
  sample decoded with a graph and backpropagated through the decoder at every step
  (:class:`ReferenceCostPipeline`); 450 steps + 2 recurrences at strength 0.5, 2 samples, CFG 8.
  The reference also holds two full copies of SD; that memory is not reproduced.
- ``reference-ieee``: ``reference`` with TF32 off for the convolutions too (PyTorch's default computes
  float32 convolutions in TF32 on the GPU): IEEE float32 everywhere, the most literal reading of "fp32".
- ``paper``: the same settings with the pipeline's defaults: bf16 where the card supports it, one
  batched UNet call per step (both samples, both CFG branches), the decoder backward only for the
  guided sample and only below the guidance gate.
- ``paper+vae-ckpt``: ``paper`` with gradient checkpointing in the VAE decoder (less memory, slower).
- ``paper+cudnn-autotune``: ``paper`` with ``torch.backends.cudnn.benchmark = True`` (cuDNN times its
  convolution algorithms for each new shape and keeps the fastest).
- ``paper+unet-channels-last``, ``paper+vae-channels-last``: ``paper`` with one model's weights in the
  channels_last memory format (its convolutions then run channels-last).
- ``paper+xformers``: ``paper`` with xformers' memory-efficient attention, only on CUDA when xformers is
  installed (every other row then switches it off and uses diffusers' default, SDPA).
- ``paper@1024``: ``paper`` on a 1024x1024 input (the decoder is tiled only if it would not fit).
- ``paper-50+1``: not measured separately: ``paper``'s per-step costs over ``fast``'s schedule, to
  separate what the shorter schedule saves from what the single sample saves.
- ``fast``: bf16, one sample (``num_samples=1``: sample 1 only ever fed the training of the
  alignment module), 50 steps + 1 recurrence at strength 0.5 (50 + 25 steps instead of 450 + 2 x 225).

Only steps with ``t`` below the guidance gate (700) are guided (decoder backward); pass 0 of 450 steps
has 100 unguided steps, the recurrences none. A full run of every configuration would take far
longer than a lent GPU's lease, so each configuration runs a short pass-0 schedule chosen to have
``warmup + N/2`` unguided then ``warmup + N`` guided steps (``N = --steps-measured``); the seconds
of each kind of step are timed after a device synchronisation at every step end (the first
``warmup`` steps of each kind are discarded), and again free-running: ``N/2`` unguided and ``N``
guided steps back to back, synchronised only before and after them, the pace of a real restoration,
which does not wait for the card at every step end. The seconds per image are extrapolated with the
exact numbers of unguided and guided steps of the configuration's full schedule. A step's cost does
not depend on the timestep, only on whether it is guided (the exposure and colour terms below
t = 100 add a few pixel-wise operations). Fixed costs per image (prompt encoding, re-noising, the
final decode) are left out: together they cost less than one step. Peak memory is what the run
allocated on the card, the weights of all components included.

The same run checks that every output is finite and restores one image in a short identical run
(``--check-steps`` steps, same seed) with ``reference``, with the default pipeline in float32 and
with ``paper``, and reports their differences: the reference pattern computes the same restoration.
With ``--compile`` it also compares the compiled run with ``paper``, and the compiled VAE decoder's
gradient at the image's latent size with eager's (cosine and norm ratio).

``paper`` (and ``paper+compile``) also get their guided step timed phase by phase, and profiled with
``torch.profiler``: the kernels' time per step on the card, against the step's measured time, tells a
step bound by the card from one bound by the host's launching of kernels, and the costliest kernels are
listed, with the host's CUDA calls and any operation that waits for the card; each phase's host time
tells which phases the host's issuing of work bounds.
``paper``'s UNet and decoder are also timed called directly, outside the pipeline.

Every row also gets the operations of its steps, counted once in a separate short run with
``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions and attention, forward and
backward), and from them the operations per image and the achieved TFLOP/s: how far a configuration
is from the card's peak. Compiled and xformers rows do the same operations as their eager SDPA row,
which the counter cannot see inside compiled code, so they take that row's count.

Example (a CPU check with tiny models; on a GPU leave out ``--tiny``)::

    ldrps-speed-benchmark --tiny --steps-measured 2 --json speed.json
"""

import argparse
import contextlib
import gc
import json
import os
import platform
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils import is_xformers_available
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel

from ldrps_pipeline.alignment_ldrps import AlignmentModule, AlignmentTrainer
from ldrps_pipeline.cli.arguments import checked_device, checked_json_path, int_in
from ldrps_pipeline.demo_training.byte_tokenizer import byte_level_clip_tokenizer
from ldrps_pipeline.evaluation.provenance import git_commit
from ldrps_pipeline.hub.loading import DTYPE_CHOICES, resolve_device, resolve_dtype
from ldrps_pipeline.perceptual_ldrps import PerceptualFeatures
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline
from ldrps_pipeline.scheduling_ldrps import RecurrentPosteriorScheduler
from ldrps_pipeline.speed_benchmark.reference_cost import ReferenceCostPipeline

PROMPT = "a photo of a landscape"
"""The prompt of every restoration (no captioner: its cost is once per image and outside the loop)."""

GIB = 2**30

RECOMPILE_LIMIT = 64
"""dynamo's limit of compiled versions per function during the compiled rows (its default is 8)."""

OPTIONAL_ROWS = (
    "reference-ieee",
    "paper+vae-ckpt",
    "paper+cudnn-autotune",
    "paper+unet-channels-last",
    "paper+vae-channels-last",
    "paper+xformers",
    "paper@large",
    "paper+compile-small-networks",
)
"""The rows that ``--skip`` may leave out (no other row or check needs them)."""


@dataclass(frozen=True)
class Schedule:
    """A restoration's step plan: pass 0 of ``steps`` steps, then ``recurrences`` passes at ``strength``."""

    steps: int
    recurrences: int
    strength: float

    def label(self) -> str:
        return f"{self.steps} + {self.recurrences} x {int(self.steps * self.strength)}"


PAPER_SCHEDULE = Schedule(steps=450, recurrences=2, strength=0.5)
FAST_POSTERIOR = RecurrentPosteriorScheduler.from_preset("fast")
FAST_SCHEDULE = Schedule(
    steps=FAST_POSTERIOR.config.num_inference_steps,
    recurrences=FAST_POSTERIOR.config.recurrences,
    strength=FAST_POSTERIOR.config.strength,
)
"""The ``"fast"`` preset's schedule (50 + 1 x 25 steps)."""


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
        posterior_scheduler=RecurrentPosteriorScheduler(),
        perceptual=perceptual.eval(),
    ).to(device)  # the aligner template too, so that the execution device is the same whatever the order
    pipe.set_progress_bar_config(disable=True)
    return pipe


def smooth_image(size: int, seed: int = 0) -> torch.Tensor:
    """A random smooth RGB image (1, 3, size, size) in [0, 1]: bilinear upsampling of 8x8 random pixels."""
    coarse = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    """The fewest DDIM steps whose single pass has at least ``unguided`` unguided and ``guided`` guided steps."""
    for steps in range(1, pipe.scheduler.config.num_train_timesteps + 1):
        counts = step_counts(pipe, posterior, Schedule(steps=steps, recurrences=0, strength=1.0))
        if counts.unguided >= unguided and counts.guided >= guided:
            return steps
    raise ValueError(f"no schedule has {unguided} unguided and {guided} guided steps")


def short_run(pipe: LDRPSPipeline, image: torch.Tensor, steps: int, seed: int, **call_kwargs: Any) -> Any:
    """``pipe``'s output for ``image`` after one pass of ``steps`` DDIM steps (no recurrence), with the benchmark's
    prompt and a generator seeded with ``seed``; ``call_kwargs`` go to the call (output type, callback, ...)."""
    return pipe(
        image,
        prompt=PROMPT,
        num_inference_steps=steps,
        recurrences=0,
        generator=torch.Generator().manual_seed(seed),
        **call_kwargs,
    )


class StepClock:
    """A ``callback_on_step_end`` that times every step and interrupts the run once enough are timed.

    At every step end it synchronises the device and reads the clock; a step's time is the time since
    the previous step's end (the first step, which includes the set-up, gets none). The first
    ``warmup`` steps of each kind (unguided, guided) are discarded.
    """

    def __init__(self, device: torch.device, posterior: RecurrentPosteriorScheduler, warmup: int, guided: int) -> None:
        self.device = device
        self.posterior = posterior
        self.warmup = warmup
        self.wanted_guided = guided
        self.seen = {False: 0, True: 0}
        self.times: dict[bool, list[float]] = {False: [], True: []}
        self.last: float | None = None

    def __call__(self, pipe: LDRPSPipeline, step_index: int, timestep: int, callback_kwargs: dict) -> dict:
        synchronize(self.device)
        now = time.perf_counter()
        guided = self.posterior.guidance_enabled(int(timestep))
        if self.last is not None and self.seen[guided] >= self.warmup:
            self.times[guided].append(now - self.last)
        self.seen[guided] += 1
        self.last = now
        if len(self.times[True]) >= self.wanted_guided:
            pipe._interrupt = True  # diffusers' documented way to stop a pipeline from its callback
        return {}


@dataclass(frozen=True)
class Measurement:
    """Seconds per unguided and guided step timed step by step (means, and the raw times) and free-running
    (:func:`free_running_step`), peak device memory (allocated, and reserved by the caching allocator),
    output finiteness."""

    unguided_step: float
    guided_step: float
    unguided_times: list[float]
    guided_times: list[float]
    free_running_unguided_step: float
    free_running_guided_step: float
    peak_gib: float | None
    peak_reserved_gib: float | None
    finite: bool


@dataclass(frozen=True)
class StepWork:
    """The floating-point operations of one unguided and one guided step, in TFLOP, as counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions and attention, forward and
    backward; element-wise work is not counted)."""

    unguided_tflop: float
    guided_tflop: float


class StepFlops:
    """A ``callback_on_step_end`` that reads a ``FlopCounterMode``'s running total at every step end and keeps
    the work of the first unguided and the first guided step after the first step (which includes the set-up);
    it interrupts the run once both are known."""

    def __init__(self, posterior: RecurrentPosteriorScheduler, mode: FlopCounterMode) -> None:
        self.posterior = posterior
        self.mode = mode
        self.tflop: dict[bool, float | None] = {False: None, True: None}
        self.last: int | None = None

    def __call__(self, pipe: LDRPSPipeline, step_index: int, timestep: int, callback_kwargs: dict) -> dict:
        total = self.mode.get_total_flops()
        guided = self.posterior.guidance_enabled(int(timestep))
        if self.last is not None and self.tflop[guided] is None:
            self.tflop[guided] = (total - self.last) / 1e12
        self.last = total
        if self.tflop[True] is not None:
            pipe._interrupt = True
        return {}


def count_step_work(pipe: LDRPSPipeline, image: torch.Tensor, seed: int, **call_kwargs: Any) -> StepWork:
    """Count the operations of one unguided and one guided step of ``pipe`` on ``image`` (eager modules only:
    compiled code runs outside the counter, and does the same operations as eager)."""
    posterior = pipe.posterior_scheduler
    with FlopCounterMode(display=False) as mode:
        counter = StepFlops(posterior, mode)
        steps = measurement_steps(pipe, posterior, unguided=2, guided=1)
        short_run(pipe, image, steps, seed, output_type="latent", callback_on_step_end=counter, **call_kwargs)
    if counter.tflop[False] is None or counter.tflop[True] is None:
        raise RuntimeError("the counting run had no unguided or no guided step after its first")
    return StepWork(unguided_tflop=counter.tflop[False], guided_tflop=counter.tflop[True])


@dataclass(frozen=True)
class Row:
    """One configuration of the table: its settings, its full schedule's step counts and its step costs.

    ``measured`` is False for a row that reuses another configuration's measurement over another schedule.
    """

    name: str
    description: str
    dtype: str
    num_samples: int
    image_size: int
    schedule: Schedule
    counts: StepCounts
    measurement: Measurement
    work: StepWork
    measured: bool = True
    vae_tiling: bool = False

    @property
    def seconds_per_image(self) -> float:
        """Extrapolated: ``unguided steps * s/unguided step + guided steps * s/guided step``."""
        m = self.measurement
        return self.counts.unguided * m.unguided_step + self.counts.guided * m.guided_step

    @property
    def free_running_seconds_per_image(self) -> float:
        """Extrapolated as :attr:`seconds_per_image`, from the free-running steps: a real restoration's pace."""
        m = self.measurement
        return self.counts.unguided * m.free_running_unguided_step + self.counts.guided * m.free_running_guided_step

    @property
    def tflop_per_image(self) -> float:
        """The counted operations of the full schedule's steps, in TFLOP."""
        return self.counts.unguided * self.work.unguided_tflop + self.counts.guided * self.work.guided_tflop

    @property
    def tflops(self) -> float:
        """The achieved rate, TFLOP per second: what fraction of the card's peak the configuration uses."""
        return self.tflop_per_image / self.seconds_per_image


def measure(
    pipe: LDRPSPipeline,
    image: torch.Tensor,
    *,
    warmup: int,
    guided: int,
    unguided: int,
    seed: int,
    **call_kwargs: Any,
) -> Measurement:
    """Time ``unguided`` unguided and ``guided`` guided steps of one restoration (after ``warmup`` of each),
    synchronised at every step end, then as many of each kind free-running (two more short restorations)."""
    device = pipe._execution_device
    posterior = pipe.posterior_scheduler
    steps = measurement_steps(pipe, posterior, warmup + unguided, warmup + guided)
    clock = StepClock(device, posterior, warmup, guided)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    restored = restore(pipe, image, steps, seed, callback_on_step_end=clock, **call_kwargs)
    peak = torch.cuda.max_memory_allocated(device) / GIB if cuda else None
    # What the caching allocator held at most: the allocations plus its fragmentation.
    peak_reserved = torch.cuda.max_memory_reserved(device) / GIB if cuda else None
    unguided_times, guided_times = clock.times[False], clock.times[True]
    if len(guided_times) < guided or len(unguided_times) < unguided:
        raise RuntimeError(f"timed {len(unguided_times)} unguided and {len(guided_times)} guided steps only")
    free_running = {
        kind: free_running_step(pipe, image, guided=kind, warmup=warmup, steps=count, seed=seed, **call_kwargs)
        for kind, count in ((False, unguided), (True, guided))
    }
    return Measurement(
        unguided_step=sum(unguided_times) / len(unguided_times),
        guided_step=sum(guided_times) / len(guided_times),
        unguided_times=unguided_times,
        guided_times=guided_times,
        free_running_unguided_step=free_running[False],
        free_running_guided_step=free_running[True],
        peak_gib=peak,
        peak_reserved_gib=peak_reserved,
        finite=bool(torch.isfinite(restored).all()),
    )


TIMED_PHASES = ("unet", "decode", "align_train", "guidance_loss", "posterior")
"""The calls :class:`PhaseTimer` times (``posterior`` is ``posterior_gradient``, which holds the middle three)."""


class PhaseTimer:
    """Times the phases of every guided step of one pipeline's restorations while in its ``with`` block.

    It wraps, on the one pipeline instance, ``predict_noise`` (the UNet call), ``decode``,
    ``guidance_loss`` and ``posterior_gradient``, and on :class:`AlignmentTrainer` ``train_step``,
    and synchronises the device around each call (so the phases add up to a little more than an
    unwrapped step). ``guidance_backward`` is what ``posterior_gradient`` spends outside the decodes,
    the training and the loss (the decoder and ``f`` backward); ``other`` is the rest of the step
    (the scheduler update, the callback), measured from one UNet call to the next.

    Each phase's host time is also kept: from its start until the call returns, before the closing
    synchronisation. Close to the phase's synchronised time, the host's issuing of the work (or a
    synchronisation inside it) bounds the phase; well below it, the device does.
    """

    def __init__(self, pipe: LDRPSPipeline) -> None:
        self.pipe = pipe
        self.device = pipe._execution_device
        self.steps: list[dict[str, float]] = []
        self.host_steps: list[dict[str, float]] = []
        self._starts: list[float] = []
        self._guided: list[bool] = []

    def _timed(self, phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            synchronize(self.device)
            start = time.perf_counter()
            if phase == "unet":
                self._starts.append(start)
                self.steps.append(dict.fromkeys(TIMED_PHASES, 0.0))
                self.host_steps.append(dict.fromkeys(TIMED_PHASES, 0.0))
                self._guided.append(False)
            result = function(*args, **kwargs)
            returned = time.perf_counter()
            synchronize(self.device)
            if self.steps:
                self.steps[-1][phase] += time.perf_counter() - start
                self.host_steps[-1][phase] += returned - start
            if phase == "posterior" and result is not None:
                self._guided[-1] = True
            return result

        return timed

    def __enter__(self) -> "PhaseTimer":
        pipe = self.pipe
        for name, phase in (
            ("predict_noise", "unet"),
            ("decode", "decode"),
            ("guidance_loss", "guidance_loss"),
            ("posterior_gradient", "posterior"),
        ):
            object.__setattr__(pipe, name, self._timed(phase, getattr(pipe, name)))
        self._train_step = AlignmentTrainer.train_step
        timed_train_step = self._timed("align_train", self._train_step)
        AlignmentTrainer.train_step = lambda trainer, *args, **kwargs: timed_train_step(trainer, *args, **kwargs)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for name in ("predict_noise", "decode", "guidance_loss", "posterior_gradient"):
            object.__delattr__(self.pipe, name)
        AlignmentTrainer.train_step = self._train_step

    def _guided_steps(self, skip: int) -> list[int]:
        """Indices of the complete guided steps after the first ``skip`` (the last step has no end)."""
        indices = [index for index, guided in enumerate(self._guided[:-1]) if guided][skip:]
        if not indices:
            raise RuntimeError("no guided step was timed")
        return indices

    @staticmethod
    def _mean(steps: list[dict[str, float]], phase: str, indices: list[int]) -> float:
        return sum(steps[i][phase] for i in indices) / len(indices)

    def guided_step_means(self, skip: int) -> dict[str, float]:
        """Mean seconds of each phase over the guided steps after the first ``skip`` (the last step has no end)."""
        indices = self._guided_steps(skip)
        means = {phase: self._mean(self.steps, phase, indices) for phase in TIMED_PHASES}
        posterior = means.pop("posterior")
        means["guidance_backward"] = max(
            0.0, posterior - means["decode"] - means["align_train"] - means["guidance_loss"]
        )
        total = sum(self._starts[i + 1] - self._starts[i] for i in indices) / len(indices)
        means["other"] = max(0.0, total - means["unet"] - posterior)
        means["total"] = total
        return means

    def guided_step_host_means(self, skip: int) -> dict[str, float]:
        """Mean host seconds of the phases of :meth:`guided_step_means` (``other`` and ``total`` left out):
        ``guidance_backward``'s is ``posterior_gradient``'s host time beyond its synchronised inner phases."""
        indices = self._guided_steps(skip)
        inner_phases = ("decode", "align_train", "guidance_loss")
        host = {phase: self._mean(self.host_steps, phase, indices) for phase in ("unet", *inner_phases)}
        inner = sum(self._mean(self.steps, phase, indices) for phase in inner_phases)
        host["guidance_backward"] = max(0.0, self._mean(self.host_steps, "posterior", indices) - inner)
        return host


def phase_breakdown(
    pipe: LDRPSPipeline, image: torch.Tensor, *, warmup: int, guided: int, seed: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean seconds of each phase of a guided step (:class:`PhaseTimer`) over ``guided`` steps after ``warmup``:
    the synchronised times, and the host's times of the same phases."""
    posterior = pipe.posterior_scheduler
    steps = measurement_steps(pipe, posterior, 1, warmup + guided + 1)
    with PhaseTimer(pipe) as timer:
        restore(pipe, image, steps, seed)
    return timer.guided_step_means(skip=warmup), timer.guided_step_host_means(skip=warmup)


class StepWindow:
    """A ``callback_on_step_end`` that opens a window after the first ``warmup`` steps of one kind (guided or
    unguided) and closes it ``steps`` steps of that kind later, then interrupts the run.

    The device is synchronised only at the window's two ends, so the steps inside run as in a real
    restoration, the host queueing work ahead of the card. ``seconds`` is the window's duration;
    ``profiler``, when given, runs inside the window, and on CUDA ``sync_debug`` has torch warn of every
    operation inside it that waits for the card (``torch.cuda.set_sync_debug_mode``).
    """

    def __init__(
        self,
        device: torch.device,
        posterior: RecurrentPosteriorScheduler,
        *,
        guided: bool,
        warmup: int,
        steps: int,
        profiler: torch.profiler.profile | None = None,
        sync_debug: bool = False,
    ) -> None:
        if warmup < 1 or steps < 1:
            raise ValueError(f"warmup and steps must be at least 1, got {warmup} and {steps}")
        self.device = device
        self.posterior = posterior
        self.guided = guided
        self.profiler = profiler
        self.sync_debug = sync_debug and device.type == "cuda"
        self.open_after = warmup
        self.close_after = warmup + steps
        self.seen = 0
        self.opened: float | None = None
        self.seconds: float | None = None

    def __call__(self, pipe: LDRPSPipeline, step_index: int, timestep: int, callback_kwargs: dict) -> dict:
        if self.posterior.guidance_enabled(int(timestep)) == self.guided:
            self.seen += 1
            if self.seen == self.open_after:
                synchronize(self.device)
                if self.profiler is not None:
                    self.profiler.start()
                if self.sync_debug:
                    torch.cuda.set_sync_debug_mode("warn")
                self.opened = time.perf_counter()
            elif self.seen == self.close_after:
                self.close()
                pipe._interrupt = True
        return {}

    def close(self) -> None:
        """Close the window if it is open (also when the run failed inside it)."""
        if self.opened is None or self.seconds is not None:
            return
        if self.sync_debug:
            torch.cuda.set_sync_debug_mode("default")
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.opened
        if self.profiler is not None:
            self.profiler.stop()


def run_window(pipe: LDRPSPipeline, image: torch.Tensor, window: StepWindow, seed: int, **call_kwargs: Any) -> float:
    """Restore ``image`` with ``window`` as the callback until it closes; returns the window's seconds."""
    posterior = pipe.posterior_scheduler
    wanted = (
        {"unguided": 1, "guided": window.close_after}
        if window.guided
        else {"unguided": window.close_after, "guided": 1}
    )
    try:
        short_run(
            pipe,
            image,
            measurement_steps(pipe, posterior, **wanted),
            seed,
            output_type="latent",
            callback_on_step_end=window,
            **call_kwargs,
        )
    finally:
        window.close()
    if window.seen < window.close_after or window.seconds is None:
        kind = "guided" if window.guided else "unguided"
        raise RuntimeError(f"the run had {window.seen} {kind} steps, not {window.close_after}")
    return window.seconds


def free_running_step(
    pipe: LDRPSPipeline,
    image: torch.Tensor,
    *,
    guided: bool,
    warmup: int,
    steps: int,
    seed: int,
    **call_kwargs: Any,
) -> float:
    """Mean seconds of a guided (or unguided) step over ``steps`` such steps run back to back, the device
    synchronised only before and after them: a real restoration's pace (the step-by-step times synchronise at
    every step end, which keeps the host from queueing the next step's work while the card finishes this one)."""
    window = StepWindow(pipe._execution_device, pipe.posterior_scheduler, guided=guided, warmup=warmup, steps=steps)
    return run_window(pipe, image, window, seed, **call_kwargs) / steps


def profile_guided_steps(
    pipe: LDRPSPipeline, image: torch.Tensor, *, warmup: int, guided: int, seed: int, top: int = 12
) -> dict[str, Any]:
    """Where a guided step's time goes on the device, from ``torch.profiler`` over ``guided`` guided steps.

    On CUDA it adds up the kernels (and copies) that ran on the card; on the CPU the operators' own CPU
    time. ``op_ms_per_step`` set against the step's unprofiled time tells a device-bound step (close to it:
    only fewer or faster kernels help) from one bound by the host's launching of them (well below it: CUDA
    graphs, ``torch.compile`` or fewer launches help). ``top`` lists the ``top`` costliest kernels or
    operators with their milliseconds and calls per step.

    On CUDA two host-side lists come with it: ``runtime``, the CUDA runtime and driver calls (launches,
    copies, synchronisations) by host time, and ``syncs``, where in the Python code an operation waited
    for the card (``torch.cuda.set_sync_debug_mode``), by calls per step.
    """
    device = pipe._execution_device
    cuda = device.type == "cuda"
    activity = torch.profiler.ProfilerActivity
    profiler = torch.profiler.profile(activities=[activity.CPU, activity.CUDA] if cuda else [activity.CPU])
    window = StepWindow(
        device, pipe.posterior_scheduler, guided=True, warmup=warmup, steps=guided, profiler=profiler, sync_debug=True
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_window(pipe, image, window, seed)
    device_type = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    by_name: dict[str, list[float]] = {}
    runtime: dict[str, list[float]] = {}
    for event in profiler.events():
        if event.is_user_annotation or event.is_async:
            continue
        if event.device_type == device_type:
            micros = event.device_time_total if cuda else event.self_cpu_time_total
            totals = by_name.setdefault(event.name, [0.0, 0])
        elif cuda and event.name.startswith("cu"):
            micros = event.cpu_time_total
            totals = runtime.setdefault(event.name, [0.0, 0])
        else:
            continue
        totals[0] += micros
        totals[1] += 1

    def ranked(totals: dict[str, list[float]], count: int) -> list[dict[str, Any]]:
        return [
            {"name": name[:160], "ms_per_step": round(micros / 1000 / guided, 3), "calls_per_step": calls / guided}
            for name, (micros, calls) in sorted(totals.items(), key=lambda item: item[1][0], reverse=True)[:count]
        ]

    profile = {
        "measured": "device kernels" if cuda else "CPU operators (self time)",
        "steps": guided,
        "op_ms_per_step": round(sum(micros for micros, _ in by_name.values()) / 1000 / guided, 2),
        "top": ranked(by_name, top),
    }
    if cuda:
        profile["runtime"] = ranked(runtime, 8)
        syncs = Counter(
            f"{Path(warning.filename).name}:{warning.lineno}"
            for warning in caught
            if "synchroniz" in str(warning.message)
        )
        profile["syncs"] = {place: calls / guided for place, calls in syncs.most_common()}
    return profile


def bare_calls(pipe: LDRPSPipeline, image_size: int, repeats: int) -> dict[str, float]:
    """Mean milliseconds of the two biggest calls of a guided step made directly, outside the pipeline.

    ``unet``: one UNet call on the paper step's batch (2 samples x both CFG branches) at ``image_size``'s
    latent grid; ``decoder``: one VAE-decoder forward of one latent. Both under ``torch.inference_mode``,
    after one untimed call, synchronised before and after the ``repeats`` timed calls. Set against the
    pipeline's own phases, they tell the pipeline's overhead from the card's speed; ALGORITHM.md
    measured the UNet call alone at 27 ms on an H200 in bf16.
    """
    device = pipe._execution_device
    rows = 2 * pipe.posterior_scheduler.config.num_samples
    grid = pipe.latent_grid(image_size, image_size)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(rows, pipe.unet.config.in_channels, *grid, generator=generator).to(device, pipe.unet.dtype)
    embeds = torch.randn(
        rows, pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim, generator=generator
    ).to(device, pipe.unet.dtype)
    timestep = torch.tensor(500, device=device)
    vae_latents = latents[:1, : pipe.vae.config.latent_channels].to(pipe.vae.dtype)
    calls = {
        "unet": lambda: pipe.unet(latents, timestep, encoder_hidden_states=embeds, return_dict=False),
        "decoder": lambda: pipe.vae.decode(vae_latents, return_dict=False),
    }
    means = {}
    with torch.inference_mode():
        for name, call in calls.items():
            call()
            synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                call()
            synchronize(device)
            means[name] = round(1000 * (time.perf_counter() - start) / repeats, 2)
    return means


def restore(pipe: LDRPSPipeline, image: torch.Tensor, steps: int, seed: int, **call_kwargs: Any) -> torch.Tensor:
    """One restoration of ``steps`` steps without recurrence, as a float32 CPU tensor (1, 3, H, W)."""
    return short_run(pipe, image, steps, seed, output_type="pt", **call_kwargs).images.float().cpu()


def difference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Max and mean absolute difference of two images."""
    diff = (a - b).abs()
    return {"max_abs": diff.max().item(), "mean_abs": diff.mean().item()}


def decoder_gradient(pipe: LDRPSPipeline, latents: torch.Tensor) -> torch.Tensor:
    """The gradient of ``mean(x0(z)^2)`` with respect to the latents ``z`` (1, C, h, w) through ``pipe``'s VAE
    decoder, in float32 on the CPU: the path by which every guidance gradient reaches the latents."""
    latents = latents.to(pipe.device).requires_grad_(True)
    height, width = (pipe.vae_scale_factor * side for side in latents.shape[-2:])
    with torch.enable_grad():
        image = pipe.decode(latents, height, width)
        return torch.autograd.grad((image**2).mean(), latents)[0].float().cpu()


def gradient_agreement(gradient: torch.Tensor, expected: torch.Tensor) -> dict[str, float]:
    """The cosine similarity of two gradients and the ratio of their norms (both 1 when they agree)."""
    cosine = torch.nn.functional.cosine_similarity(gradient.flatten(), expected.flatten(), dim=0)
    return {"cosine": cosine.item(), "norm_ratio": (gradient.norm() / expected.norm()).item()}


def variant(pipe: LDRPSPipeline, cls: type[LDRPSPipeline] = LDRPSPipeline, **replacements: Any) -> LDRPSPipeline:
    """A pipeline of class ``cls`` sharing ``pipe``'s components (the same modules), with some replaced."""
    other = cls(**{**pipe.components, **replacements})
    other.set_progress_bar_config(disable=True)
    if pipe.xformers_attention is not None:
        # The same attention as pipe: otherwise the first CUDA call would switch xformers on when installed.
        other.set_use_memory_efficient_attention_xformers(pipe.xformers_attention)
    return other


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


def environment(device: torch.device, commit: str | None) -> dict[str, Any]:
    """The card, software versions, commit and the float32 matrix settings of the run."""
    return {
        "device": str(device),
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "card_memory_gib": torch.cuda.get_device_properties(device).total_memory / GIB
        if device.type == "cuda"
        else None,
        "commit": commit or git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def xformers_build() -> dict[str, Any]:
    """xformers' version, and why its own compiled extension did not load (``None`` when it did): without
    it, its attention runs on PyTorch's kernels (the ``cutlassF-pt`` / ``cutlassB-pt`` operators)."""
    import xformers
    from xformers import _cpp_lib

    error = getattr(_cpp_lib, "_cpp_library_load_exception", None)
    return {"version": xformers.__version__, "extension_error": None if error is None else repr(error)}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def run(
    args: argparse.Namespace,
    log: Callable[[str], None] = print,
    save: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Build the components, measure every configuration and run the checks; returns the JSON-ready results.

    ``save`` gets the results so far (``"complete": False``) after every row, so that a run cut short by
    its device lease still leaves every finished row behind, and the final results at the end.
    """
    start = time.perf_counter()
    device = resolve_device(args.device)
    spec = TINY if args.tiny else SD21_BASE
    image_size = args.image_size or spec.image_size
    large_size = args.large_image_size or spec.large_image_size
    unguided_measured = max(1, args.steps_measured // 2)
    env = environment(device, args.commit)
    log(
        f"ldrps-speed-benchmark on {env['card']} ({device}) | torch {env['torch']} | diffusers {env['diffusers']} "
        f"| transformers {env['transformers']} | commit {env['commit'] or 'unknown'}"
    )
    pipe = build_pipeline(spec, device, args.seed)
    half = resolve_dtype(args.dtype, device)
    checks: dict[str, Any] = {"steps": args.check_steps, "seed": args.seed}
    xformers = device.type == "cuda" and is_xformers_available()
    if xformers:
        # Every row but paper+xformers keeps diffusers' default attention, SDPA.
        pipe.disable_xformers_memory_efficient_attention()
        checks["xformers"] = xformers_build()
    log(
        f"{'tiny' if args.tiny else 'SD 2.1-base'} components, random weights: UNet "
        f"{sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.1f}M parameters; images {image_size} and "
        f"{large_size} px; built in {time.perf_counter() - start:.1f} s"
    )
    image = smooth_image(image_size, args.seed)
    posterior = pipe.posterior_scheduler
    rows: list[Row] = []
    phases_ms: dict[str, dict[str, float]] = {}
    host_ms: dict[str, dict[str, float]] = {}
    profiles: dict[str, dict[str, Any]] = {}

    def results(complete: bool) -> dict[str, Any]:
        """The JSON-ready results so far."""
        baseline = rows[0].seconds_per_image if rows else None
        return {
            "complete": complete,
            "environment": {**env, "seconds": round(time.perf_counter() - start, 1)},
            "settings": {
                "tiny": args.tiny,
                "half_dtype": _dtype_name(half),
                "steps_measured": {"guided": args.steps_measured, "unguided": unguided_measured},
                "warmup": args.warmup,
                "image_size": image_size,
                "large_image_size": large_size,
                "prompt": PROMPT,
                "guidance_scale": 8.0,
                "compile": args.compile,
                "recompile_limit": RECOMPILE_LIMIT if args.compile is not None else None,
                "skipped": list(args.skip),
            },
            "rows": [
                {
                    **asdict(row),
                    "seconds_per_image": row.seconds_per_image,
                    "free_running_seconds_per_image": row.free_running_seconds_per_image,
                    "speedup": baseline / row.seconds_per_image,
                    "tflop_per_image": row.tflop_per_image,
                    "tflops": row.tflops,
                }
                for row in rows
            ],
            "checks": checks,
            "guided_step_phases_ms": phases_ms,
            "guided_step_host_ms": host_ms,
            "guided_step_profiles": profiles,
        }

    def measured_row(
        name: str,
        description: str,
        target: LDRPSPipeline,
        schedule: Schedule,
        size: int = image_size,
        vae_tiling: bool = False,
        work: StepWork | None = None,
        **call_kwargs: Any,
    ) -> Row:
        """Time ``target`` and add its row; ``work``: another row's operations, for a configuration that does the
        same operations in code the counter cannot see (compiled, xformers); ``None`` counts them."""
        row_image = image if size == image_size else smooth_image(size, args.seed)
        measurement = measure(
            target,
            row_image,
            warmup=args.warmup,
            guided=args.steps_measured,
            unguided=unguided_measured,
            seed=args.seed,
            **call_kwargs,
        )
        if work is None:
            work = count_step_work(target, row_image, args.seed, **call_kwargs)
        row = Row(
            name=name,
            description=description,
            dtype=_dtype_name(target.unet.dtype),
            num_samples=target.posterior_scheduler.config.num_samples,
            image_size=size,
            schedule=schedule,
            counts=step_counts(target, target.posterior_scheduler, schedule),
            measurement=measurement,
            work=work,
            vae_tiling=vae_tiling,
        )
        m = measurement
        peak = f", peak {m.peak_gib:.2f} GiB ({m.peak_reserved_gib:.2f} reserved)" if m.peak_gib is not None else ""
        log(
            f"{name}: {m.guided_step:.4f} s/guided step, {m.unguided_step:.4f} s/unguided step{peak}; "
            f"{row.seconds_per_image:.1f} s/image extrapolated from {args.steps_measured} guided + "
            f"{unguided_measured} unguided steps, {row.free_running_seconds_per_image:.1f} s/image free-running "
            f"({m.free_running_guided_step:.4f} s/guided step, {m.free_running_unguided_step:.4f} s/unguided step); "
            f"{work.guided_tflop:.2f} TFLOP/guided step, "
            f"{work.unguided_tflop:.2f} TFLOP/unguided step, {row.tflops:.1f} TFLOP/s; output finite: {m.finite}"
        )
        rows.append(row)
        if save is not None:
            save(results(complete=False))
        return row

    # float32 first: the reference pattern, and the comparison runs that need float32 weights.
    reference = variant(pipe, ReferenceCostPipeline)
    measured_row(
        "reference",
        "float32; UNet in batches of 2 rows; decoder forward+backward for both samples at every step",
        reference,
        PAPER_SCHEDULE,
        unet_batch_size=2,
    )
    if "reference-ieee" not in args.skip:
        with ieee_float32():
            measured_row(
                "reference-ieee",
                "the reference pattern with TF32 off for convolutions too (IEEE float32 everywhere)",
                reference,
                PAPER_SCHEDULE,
                unet_batch_size=2,
            )
    reference_image = restore(reference, image, args.check_steps, args.seed, unet_batch_size=2)
    default_image = restore(pipe, image, args.check_steps, args.seed)
    checks["default_float32_vs_reference"] = difference(default_image, reference_image)

    pipe.to(dtype=half)
    paper = measured_row(
        "paper",
        "pipeline defaults: one batched UNet call per step; decoder backward for the guided sample, below the gate",
        pipe,
        PAPER_SCHEDULE,
    )
    paper_image = restore(pipe, image, args.check_steps, args.seed)
    checks[f"paper_{_dtype_name(half)}_vs_reference"] = difference(paper_image, reference_image)
    # The scale of the guidance's effect: a compiled run far closer to paper than this guides like it.
    unguided = variant(pipe, posterior_scheduler=posterior.with_preset("default", posterior_scale=0.0))
    checks[f"paper_{_dtype_name(half)}_vs_guidance_off"] = difference(
        paper_image, restore(unguided, image, args.check_steps, args.seed)
    )

    def time_phases(row: Row) -> None:
        """The phase breakdown and the profile of ``row``'s guided step (``pipe`` in ``row``'s configuration)."""
        breakdown, host = phase_breakdown(pipe, image, warmup=args.warmup, guided=args.breakdown_steps, seed=args.seed)
        phases_ms[row.name] = {phase: round(1000 * value, 2) for phase, value in breakdown.items()}
        host_ms[row.name] = {phase: round(1000 * value, 2) for phase, value in host.items()}
        log(phases_line(row.name, PHASES_LABEL, phases_ms[row.name]))
        log(phases_line(row.name, HOST_LABEL, host_ms[row.name]))
        m = row.measurement
        profile = {
            "measured_step_ms": round(1000 * m.guided_step, 2),
            "free_running_step_ms": round(1000 * m.free_running_guided_step, 2),
            "free_running_unguided_step_ms": round(1000 * m.free_running_unguided_step, 2),
            "free_running_seconds_per_image": round(row.free_running_seconds_per_image, 1),
        }
        log(profile_line(row.name, profile))
        profiles[row.name] = profile
        try:
            profile.update(
                profile_guided_steps(pipe, image, warmup=args.warmup, guided=args.breakdown_steps, seed=args.seed)
            )
        except Exception as error:  # the profile only informs: a profiler the card's setup lacks must not end the run
            checks[f"{row.name}_profile_error"] = repr(error)
            log(f"{row.name}: the profiler failed: {error!r}")
            return
        log(profile_line(row.name, profile))

    time_phases(paper)
    checks["bare_calls_ms"] = bare_calls(pipe, image_size, args.breakdown_steps)
    log(f"paper's UNet and decoder called directly (ms): {checks['bare_calls_ms']}")

    if "paper+vae-ckpt" not in args.skip:
        pipe.vae.enable_gradient_checkpointing()
        measured_row("paper+vae-ckpt", "paper with gradient checkpointing in the VAE decoder", pipe, PAPER_SCHEDULE)
        pipe.vae.disable_gradient_checkpointing()

    if "paper+cudnn-autotune" not in args.skip:
        with cudnn_autotuning():
            autotuned = measured_row(
                "paper+cudnn-autotune", "paper with torch.backends.cudnn.benchmark = True", pipe, PAPER_SCHEDULE
            )
            # The compiled rows run with autotuning on, and their eager alignment training took twice paper's
            # host time (run 5): this row's phases tell whether autotuning is the cause.
            time_phases(autotuned)

    # channels_last for one model at a time (run 1 found both together slower than NCHW, 118.5 s vs 97.6 s).
    for model_name in ("unet", "vae"):
        name = f"paper+{model_name}-channels-last"
        if name not in args.skip:
            model = getattr(pipe, model_name)
            model.to(memory_format=torch.channels_last)
            measured_row(name, f"paper with the {model_name} in the channels_last memory format", pipe, PAPER_SCHEDULE)
            model.to(memory_format=torch.contiguous_format)

    if xformers and "paper+xformers" not in args.skip:
        try:
            pipe.enable_xformers_memory_efficient_attention()
            measured_row(
                "paper+xformers",
                "paper with xformers' memory-efficient attention",
                pipe,
                PAPER_SCHEDULE,
                work=paper.work,
            )
        except Exception as error:  # an xformers build without kernels for this card: record it and go on
            checks["xformers_error"] = repr(error)
            log(f"paper+xformers failed: {error!r}")
        pipe.disable_xformers_memory_efficient_attention()

    large = f"paper@{large_size}"
    if "paper@large" not in args.skip:
        out_of_memory = False
        try:
            measured_row(large, "paper's settings on a large input", pipe, PAPER_SCHEDULE, large_size)
        except torch.OutOfMemoryError:
            out_of_memory = True
        if out_of_memory:
            # Outside the except block: the failed run's tensors (held by its traceback) are freed by then.
            log(f"{large} ran out of device memory: retrying with the tiled VAE decoder")
            gc.collect()
            torch.cuda.empty_cache()
            pipe.vae.enable_tiling()
            try:
                measured_row(
                    large,
                    "paper's settings on a large input, tiled VAE decoder",
                    pipe,
                    PAPER_SCHEDULE,
                    large_size,
                    vae_tiling=True,
                )
            except torch.OutOfMemoryError as error:
                checks["large_input_error"] = repr(error)
                log(f"{large} ran out of device memory with the tiled decoder too: {error!r}")
            finally:
                pipe.vae.disable_tiling()

    rows.append(
        Row(
            name=f"paper-{FAST_SCHEDULE.steps}+{FAST_SCHEDULE.recurrences}",
            description="paper's per-step costs (2 samples) over fast's schedule; not run separately",
            dtype=paper.dtype,
            num_samples=paper.num_samples,
            image_size=image_size,
            schedule=FAST_SCHEDULE,
            counts=step_counts(pipe, posterior, FAST_SCHEDULE),
            measurement=paper.measurement,
            work=paper.work,
            measured=False,
        )
    )
    fast = variant(pipe, posterior_scheduler=posterior.with_preset("fast"))
    fast_row = measured_row(
        "fast",
        f"the fast preset: one sample; {FAST_SCHEDULE.steps} steps + {FAST_SCHEDULE.recurrences} recurrence at strength "
        f"{FAST_SCHEDULE.strength}",
        fast,
        FAST_SCHEDULE,
    )

    outputs = [reference_image, default_image, paper_image]

    def compiled_rows(mode: str, latents: torch.Tensor, eager_gradient: torch.Tensor) -> None:
        """Compile ``pipe`` in ``mode``, check its restoration and decoder gradient against eager, and time
        the paper+compile (with its phases) and fast+compile rows."""
        compile_start = time.perf_counter()
        pipe.enable_torch_compile(mode=mode)
        compiled_image = restore(pipe, image, args.check_steps, args.seed)
        checks["compile_mode"] = mode
        checks["compile_seconds"] = round(time.perf_counter() - compile_start, 1)
        log(f"torch.compile(mode={mode!r}): first {args.check_steps}-step run {checks['compile_seconds']} s")
        checks[f"compiled_vs_paper_{_dtype_name(half)}"] = difference(compiled_image, paper_image)
        checks["compiled_decoder_gradient"] = gradient_agreement(decoder_gradient(pipe, latents), eager_gradient)
        log(f"compiled vs eager decoder gradient: {checks['compiled_decoder_gradient']}")
        outputs.append(compiled_image)
        described = f"torch.compile(mode={mode!r}) and cudnn.benchmark"
        compiled = measured_row("paper+compile", f"paper with {described}", pipe, PAPER_SCHEDULE, work=paper.work)
        time_phases(compiled)
        measured_row("fast+compile", f"fast with {described}", fast, FAST_SCHEDULE, work=fast_row.work)
        checks["compiled_graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]

    if args.compile is not None:
        # Last, because compiling is in place: the first warm-up steps pay for the compilation.
        # With cuDNN autotuning: the compiled graphs call cuDNN for the convolutions.
        # Every image size, batch, grad mode and autocast state is its own graph (static shapes): the raised
        # limit keeps any function from falling back to eager over paper and fast together.
        with cudnn_autotuning(), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            # The guided sample's decoder gradient at this image size, eager then compiled: the direct check
            # that the compiled backward is right (inductor 2.13 on the CPU returned zeros for a bf16 decoder).
            latent_shape = (1, pipe.vae.config.latent_channels, *pipe.latent_grid(image_size, image_size))
            latents = torch.randn(latent_shape, generator=torch.Generator().manual_seed(args.seed))
            eager_gradient = decoder_gradient(pipe, latents)
            # The modes in turn until one gives its paper row; a failing mode (a CUDA-graph mode, say) is recorded.
            for mode in args.compile or ["default"]:
                rows_before = len(rows)
                try:
                    compiled_rows(mode, latents, eager_gradient)
                    break
                except Exception as error:
                    checks.setdefault("compile_errors", {})[mode] = repr(error)
                    log(f"the compiled rows failed (torch.compile mode {mode!r}): {error!r}")
                    if len(rows) > rows_before:
                        break  # its paper row stands
                    torch._dynamo.reset()
            if "compile_mode" in checks and "paper+compile-small-networks" not in args.skip:
                # The perceptual features and the alignment networks compiled too (enable_torch_compile's
                # small_networks=True, its default until they were seen slower compiled): the phases side by side.
                mode = checks["compile_mode"]
                try:
                    pipe.enable_torch_compile(small_networks=True, mode=mode)
                    small = measured_row(
                        "paper+compile-small-networks",
                        f"paper with torch.compile(mode={mode!r}) of the UNet, the decoder, the perceptual features "
                        "and the alignment networks, and cudnn.benchmark",
                        pipe,
                        PAPER_SCHEDULE,
                        work=paper.work,
                    )
                    time_phases(small)
                except Exception as error:
                    checks["small_networks_error"] = repr(error)
                    log(f"paper+compile-small-networks failed: {error!r}")

    checks["all_outputs_finite"] = all(row.measurement.finite for row in rows) and all(
        bool(torch.isfinite(x).all()) for x in outputs
    )
    final = results(complete=True)
    if save is not None:
        save(final)
    return final


PHASES_LABEL = "guided step by phase (ms, device synchronised around each)"
HOST_LABEL = "guided step, host time to issue each phase (ms)"


def phases_line(name: str, label: str, phases: dict[str, float]) -> str:
    """One line of milliseconds by phase of ``name``'s guided step (``PHASES_LABEL`` or ``HOST_LABEL``), for the
    log and the table."""
    return f"{name}'s {label}: " + ", ".join(f"{phase} {value:g}" for phase, value in phases.items())


def profile_line(name: str, profile: dict[str, Any]) -> str:
    """One line of ``name``'s guided step profile (the free-running step, and the profiler's part once it
    is there), for the log and the table."""
    line = (
        f"{name}'s guided step: {profile['measured_step_ms']:g} ms timed step by step, "
        f"{profile['free_running_step_ms']:g} ms free-running (unguided {profile['free_running_unguided_step_ms']:g}"
        f" ms; {profile['free_running_seconds_per_image']:g} s/image)"
    )
    if "op_ms_per_step" in profile:
        costliest = "; ".join(f"{entry['name'][:50]} {entry['ms_per_step']:g}" for entry in profile["top"][:3])
        line += f"; profiled: {profile['measured']} {profile['op_ms_per_step']:g} ms; costliest (ms): {costliest}"
    if profile.get("runtime"):
        calls = "; ".join(
            f"{entry['name'][:40]} {entry['ms_per_step']:g} ({entry['calls_per_step']:g})"
            for entry in profile["runtime"]
        )
        line += f"; host CUDA calls, ms (calls) per step: {calls}"
    if "syncs" in profile:
        waits = "; ".join(f"{place} {calls:g}" for place, calls in profile["syncs"].items()) or "none"
        line += f"; operations waiting for the card, calls per step: {waits}"
    return line


def format_table(results: dict[str, Any]) -> str:
    """The compact markdown table of :func:`run`'s results, with notes on how the numbers were made and the checks."""
    lines = [
        "| config | dtype | samples | image | steps (unguided + guided) | s/guided step | s/unguided step "
        "| s/image (extrapolated) | s/image free-running | peak GiB | speed-up vs reference | PFLOP/image | TFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        m = row["measurement"]
        peak = f"{m['peak_gib']:.2f}" if m["peak_gib"] is not None else "-"
        name = row["name"] + (" (tiled VAE)" if row["vae_tiling"] else "") + ("" if row["measured"] else " *")
        lines.append(
            f"| {name} | {row['dtype']} | {row['num_samples']} | {row['image_size']} "
            f"| {row['counts']['unguided']} + {row['counts']['guided']} | {m['guided_step']:.4f} "
            f"| {m['unguided_step']:.4f} | {row['seconds_per_image']:.1f} | {row['free_running_seconds_per_image']:.1f} "
            f"| {peak} | {row['speedup']:.2f}x "
            f"| {row['tflop_per_image'] / 1000:.3g} | {row['tflops']:.3g} |"
        )
    settings, checks = results["settings"], results["checks"]
    measured = settings["steps_measured"]
    lines += [
        "",
        f"s/image extrapolated from {measured['guided']} guided + {measured['unguided']} unguided timed steps per "
        f"configuration (after {settings['warmup']} warm-up steps of each kind) to the full schedules, "
        f"{PAPER_SCHEDULE.label()} steps (paper) and {FAST_SCHEDULE.label()} (fast); fixed per-image costs left out. "
        "The step-by-step columns synchronise the device at every step end; free-running, as many steps of each "
        "kind run back to back (synchronised only around them), as in a real restoration. Speed-ups are step by step.",
        "* not run separately: paper's measured per-step costs over fast's schedule.",
        f"Checks ({checks['steps']}-step restorations, seed {checks['seed']}): all outputs finite: "
        f"{checks['all_outputs_finite']}",
    ]
    lines += [
        f"  {key}: max |diff| {value['max_abs']:.3g}, mean |diff| {value['mean_abs']:.3g}"
        for key, value in checks.items()
        if isinstance(value, dict) and "max_abs" in value
    ]
    if "compiled_decoder_gradient" in checks:
        agreement = checks["compiled_decoder_gradient"]
        lines.append(
            f"  compiled vs eager decoder gradient ({settings['image_size']} px): cosine {agreement['cosine']:.4f}, "
            f"norm ratio {agreement['norm_ratio']:.4f}"
        )
    for label, key in ((PHASES_LABEL, "guided_step_phases_ms"), (HOST_LABEL, "guided_step_host_ms")):
        lines += [f"  {phases_line(name, label, phases)}" for name, phases in results[key].items()]
    lines += [f"  {profile_line(name, profile)}" for name, profile in results["guided_step_profiles"].items()]
    if "bare_calls_ms" in checks:
        bare = checks["bare_calls_ms"]
        lines.append(
            f"  called directly, outside the pipeline (ms): UNet {bare['unet']:g} (paper's batch), "
            f"decoder forward {bare['decoder']:g} (one latent)"
        )
    if "compile_seconds" in checks:
        lines.append(f"  torch.compile: the first {checks['steps']}-step run took {checks['compile_seconds']} s")
    for mode, error in checks.get("compile_errors", {}).items():
        lines.append(f"  the compiled rows failed with torch.compile mode {mode!r}: {error}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldrps-speed-benchmark",
        description="Seconds per image and peak memory of LD-RPS configurations, measured side by side (random weights).",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny components and images (a quick CPU check)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="dtype of every configuration but the reference (auto: bfloat16 where the card supports it)",
    )
    parser.add_argument("--steps-measured", type=int_in(1), default=30, help="guided steps timed per configuration")
    parser.add_argument("--warmup", type=int_in(1), default=2, help="steps of each kind run before timing (>= 1)")
    parser.add_argument(
        "--check-steps", type=int_in(1), default=10, help="steps of the short identical comparison runs"
    )
    parser.add_argument(
        "--breakdown-steps",
        type=int_in(1),
        default=6,
        help="guided steps of paper timed phase by phase (UNet, decode, ...)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="test image side (default 512; tiny 32)")
    parser.add_argument("--large-image-size", type=int, default=None, help="large image side (default 1024; tiny 64)")
    parser.add_argument(
        "--compile",
        nargs="*",
        default=None,
        metavar="MODE",
        help="also time paper and fast with torch.compile of the UNet and the VAE decoder (pipe.enable_torch_compile), "
        "in the first MODE that works (failures are recorded; no MODE: 'default'; e.g. "
        "--compile reduce-overhead default); compilation time is reported apart",
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        choices=OPTIONAL_ROWS,
        default=[],
        metavar="ROW",
        help=f"leave out these rows, to fit a short device lease: any of {', '.join(OPTIONAL_ROWS)}",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commit", default=None, help="commit to record when the checkout has no git metadata")
    parser.add_argument(
        "--json", type=Path, default=None, help="write the results here (default: $OUT/speed.json when OUT is set)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON; exit status 1 when an output is not finite."""
    parser = build_parser()
    args = parser.parse_args(argv)
    checked_device(parser, args.device)
    path = args.json or (Path(os.environ["OUT"]) / "speed.json" if os.environ.get("OUT") else None)
    save = None
    if path is not None:
        checked_json_path(parser, path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def save(results: dict[str, Any]) -> None:
            # This run's own file, rewritten after every row.
            path.write_text(json.dumps(results, indent=2) + "\n")

    results = run(args, save=save)
    print(format_table(results), flush=True)
    if path is not None:
        print(f"wrote {path}", flush=True)
    return 0 if results["checks"]["all_outputs_finite"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

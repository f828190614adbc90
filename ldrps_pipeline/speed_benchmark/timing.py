"""The speed benchmark's clocks: seconds per unguided and guided step, timed step by step (the device
synchronised at every step end) and free-running (synchronised only around a window of steps), peak device
memory, the UNet and decoder timed outside the pipeline, and the extrapolation to a full schedule.

Every clock is a ``callback_on_step_end`` (the pipeline's public hook): it reads the clock at step ends and
stops the run through diffusers' documented ``pipe._interrupt`` flag once it has its steps.
"""

import time
from dataclasses import dataclass
from typing import Any

import torch

from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline
from ldrps_pipeline.scheduling_ldrps import RecurrentPosteriorScheduler
from ldrps_pipeline.speed_benchmark.specs import PROMPT, StepCounts, measurement_steps

GIB = 2**30


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stop_after_this_step(pipe: LDRPSPipeline) -> None:
    """Ask ``pipe``'s running call to stop after the current step: diffusers' documented way for a
    ``callback_on_step_end`` to interrupt a pipeline (``pipeline._interrupt = True``)."""
    pipe._interrupt = True


def extrapolate(counts: StepCounts, unguided: float, guided: float) -> float:
    """The cost of a full schedule whose unguided steps cost ``unguided`` and guided steps ``guided`` each."""
    return counts.unguided * unguided + counts.guided * guided


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


def restore(pipe: LDRPSPipeline, image: torch.Tensor, steps: int, seed: int, **call_kwargs: Any) -> torch.Tensor:
    """One restoration of ``steps`` steps without recurrence, as a float32 CPU tensor (1, 3, H, W)."""
    return short_run(pipe, image, steps, seed, output_type="pt", **call_kwargs).images.float().cpu()


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
            stop_after_this_step(pipe)
        return {}


class StepWindow:
    """A ``callback_on_step_end`` that opens a window after the first ``warmup`` steps of one kind (guided or
    unguided) and closes it ``steps`` steps of that kind later, then interrupts the run.

    The device is synchronised only at the window's two ends, so the steps inside run as in a real
    restoration, the host queueing work ahead of the card. ``seconds`` is the window's duration. On CUDA
    ``sync_debug`` has torch warn of every operation inside the window that waits for the card
    (``torch.cuda.set_sync_debug_mode``).
    """

    def __init__(
        self,
        device: torch.device,
        posterior: RecurrentPosteriorScheduler,
        *,
        guided: bool,
        warmup: int,
        steps: int,
        sync_debug: bool = False,
    ) -> None:
        if warmup < 1 or steps < 1:
            raise ValueError(f"warmup and steps must be at least 1, got {warmup} and {steps}")
        self.device = device
        self.posterior = posterior
        self.guided = guided
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
                if self.sync_debug:
                    torch.cuda.set_sync_debug_mode("warn")
                self.opened = time.perf_counter()
            elif self.seen == self.close_after:
                self.close()
                stop_after_this_step(pipe)
        return {}

    def close(self) -> None:
        """Close the window if it is open (also when the run failed inside it)."""
        if self.opened is None or self.seconds is not None:
            return
        if self.sync_debug:
            torch.cuda.set_sync_debug_mode("default")
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.opened


def run_window(pipe: LDRPSPipeline, image: torch.Tensor, window: StepWindow, seed: int, **call_kwargs: Any) -> float:
    """Restore ``image`` with ``window`` as the callback until it closes; returns the window's seconds.

    The run has exactly ``window.close_after`` steps of the window's kind (and at least one of the other kind):
    it stops right after the window's last step.

    Raises:
        RuntimeError: when the run ended before the window closed.
    """
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
    window = StepWindow(pipe.device, pipe.posterior_scheduler, guided=guided, warmup=warmup, steps=steps)
    return run_window(pipe, image, window, seed, **call_kwargs) / steps


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
    synchronised at every step end, then as many of each kind free-running (two more short restorations).

    Raises:
        RuntimeError: when the restoration had fewer steps of a kind than asked for.
    """
    device = pipe.device
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


def bare_calls(pipe: LDRPSPipeline, image_size: int, repeats: int) -> dict[str, float]:
    """Mean milliseconds of the two biggest calls of a guided step made directly, outside the pipeline.

    ``unet``: one UNet call on the paper step's batch (2 samples x both CFG branches) at ``image_size``'s
    latent grid; ``decoder``: one VAE-decoder forward of one latent. Both under ``torch.inference_mode``,
    after one untimed call, synchronised before and after the ``repeats`` timed calls. Set against the
    pipeline's own phases, they tell the pipeline's overhead from the card's speed; ALGORITHM.md
    measured the UNet call alone at 27 ms on an H200 in bf16.
    """
    device = pipe.device
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

"""The floating-point operations of a step, counted with ``torch.utils.flop_counter.FlopCounterMode`` in a
short run that is not timed: with a row's seconds they give its achieved TFLOP/s."""

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline
from ldrps_pipeline.scheduling_ldrps import RecurrentPosteriorScheduler
from ldrps_pipeline.speed_benchmark.specs import measurement_steps
from ldrps_pipeline.speed_benchmark.timing import short_run, stop_after_this_step


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
            stop_after_this_step(pipe)
        return {}


def count_step_work(pipe: LDRPSPipeline, image: torch.Tensor, seed: int, **call_kwargs: Any) -> StepWork:
    """Count the operations of one unguided and one guided step of ``pipe`` on ``image`` (eager modules only:
    compiled code runs outside the counter, and does the same operations as eager).

    Raises:
        RuntimeError: when the counting run had no unguided or no guided step after its first.
    """
    posterior = pipe.posterior_scheduler
    with FlopCounterMode(display=False) as mode:
        counter = StepFlops(posterior, mode)
        steps = measurement_steps(pipe, posterior, unguided=2, guided=1)
        short_run(pipe, image, steps, seed, output_type="latent", callback_on_step_end=counter, **call_kwargs)
    if counter.tflop[False] is None or counter.tflop[True] is None:
        raise RuntimeError("the counting run had no unguided or no guided step after its first")
    return StepWork(unguided_tflop=counter.tflop[False], guided_tflop=counter.tflop[True])

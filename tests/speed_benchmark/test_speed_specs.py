"""The speed benchmark's schedules, step counts and backend switches."""

import torch

from ldrps_pipeline.speed_benchmark.specs import (
    FAST_SCHEDULE,
    PAPER_SCHEDULE,
    Schedule,
    StepCounts,
    ieee_float32,
    measurement_steps,
    step_counts,
)
from tiny_components import tiny_pipeline


def test_full_schedule_step_counts():
    pipe = tiny_pipeline()
    posterior = pipe.posterior_scheduler
    # Pass 0 of 450 steps: 899..701 unguided (100), 699..1 guided (350); two recurrences of 225 guided steps.
    assert step_counts(pipe, posterior, PAPER_SCHEDULE) == StepCounts(unguided=100, guided=800)
    assert step_counts(pipe, posterior, FAST_SCHEDULE) == StepCounts(unguided=15, guided=60)
    assert (PAPER_SCHEDULE.label(), FAST_SCHEDULE.label()) == ("450 + 2 x 225", "50 + 1 x 25")
    steps = measurement_steps(pipe, posterior, unguided=5, guided=12)
    counts = step_counts(pipe, posterior, Schedule(steps=steps, recurrences=0, strength=1.0))
    assert counts.unguided >= 5 and counts.guided >= 12
    smaller = step_counts(pipe, posterior, Schedule(steps=steps - 1, recurrences=0, strength=1.0))
    assert smaller.unguided < 5 or smaller.guided < 12


def test_ieee_float32_turns_tf32_off_inside_and_restores_the_settings():
    def tf32_flags():
        return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    before = tf32_flags()
    with ieee_float32():
        assert tf32_flags() == (False, False)
    assert tf32_flags() == before

"""The speed benchmark's clocks: the step window, and the step-by-step and free-running timing of a row."""

import time

import pytest

from ldrps_pipeline.speed_benchmark.timing import StepWindow, measure, run_window
from tiny_components import tiny_image, tiny_pipeline


@pytest.mark.parametrize("guided", [False, True])
def test_step_window_times_the_steps_asked_for(guided):
    pipe = tiny_pipeline()
    posterior = pipe.posterior_scheduler
    unet_calls = []  # (when, timestep) of every UNet call, seen by a forward pre-hook on the component
    hook = pipe.unet.register_forward_pre_hook(
        lambda module, args: unet_calls.append((time.perf_counter(), int(args[1])))
    )
    window = StepWindow(pipe.device, posterior, guided=guided, warmup=2, steps=3)
    try:
        seconds = run_window(pipe, tiny_image(), window, seed=0)
    finally:
        hook.remove()
    end = time.perf_counter()
    kinds = [posterior.guidance_enabled(t) for _, t in unet_calls]
    # The run stopped at the window's end: 2 warm-up + 3 timed steps of the kind, all of the run's steps of it.
    assert kinds.count(guided) == 5 and window.seen == 5 and kinds[-1] == guided
    # The window opened after step 2 of the kind and closed after step 5: it holds steps 3 to 5 whole.
    calls = [when for (when, _), kind in zip(unet_calls, kinds, strict=True) if kind == guided]
    assert calls[4] - calls[2] <= seconds <= end - calls[1]
    with pytest.raises(ValueError, match="warmup and steps"):
        StepWindow(pipe.device, posterior, guided=guided, warmup=0, steps=3)


def test_measure_times_free_running_steps_with_the_same_call_arguments():
    pipe = tiny_pipeline()
    rows = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        m = measure(pipe, tiny_image(), warmup=1, guided=2, unguided=1, seed=0, unet_batch_size=2)
    finally:
        hook.remove()
    assert m.free_running_guided_step > 0 and m.free_running_unguided_step > 0
    assert len(m.guided_times) == 2 and len(m.unguided_times) >= 1 and m.peak_gib is None and m.finite
    # The step-by-step run and both free-running runs all split the UNet batch (2 samples x CFG) as asked.
    assert set(rows) == {2} and len(rows) >= 2 * 3 * 3

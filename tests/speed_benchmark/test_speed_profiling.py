"""The speed benchmark's profile of the guided step, from the pipeline's ``torch.profiler`` ranges: a real CPU
profile, and CUDA-shaped events (kernels, a backward on the autograd engine's thread) built by hand."""

import warnings

import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

from ldrps_pipeline.pipeline_ldrps import PROFILER_RANGES
from ldrps_pipeline.speed_benchmark.profiling import (
    PHASES,
    Span,
    covered_us,
    profile_guided_steps,
    profile_records,
    profiled_steps,
    summarize,
    waits_per_step,
)
from tiny_components import tiny_image, tiny_pipeline

PHASE_KEYS = {*PHASES, "other", "total"}


def test_profile_covers_exactly_the_guided_steps_asked_for():
    pipe = tiny_pipeline()
    profile = profile_guided_steps(pipe, tiny_image(), warmup=1, guided=3, seed=0, top=1000)
    calls = {entry["name"]: entry["calls_per_step"] for entry in profile["top"]}
    # One x0 clip (the posterior scheduler's quantile) per step: the profile is exactly the 3 guided steps.
    assert calls["aten::quantile"] == 1.0
    assert profile["measured"] == "CPU operators (self time)" and profile["steps"] == 3
    assert profile["op_ms_per_step"] > 0 and "runtime" not in profile and "syncs" not in profile
    host = profile["phases"]["host_ms"]
    assert set(host) == PHASE_KEYS and all(host[phase] > 0 for phase in PHASES) and host["other"] >= 0
    # The phases do not overlap: with the rest of the step they make up the step (each figure rounded to 0.01).
    assert sum(host[phase] for phase in PHASES) + host["other"] == pytest.approx(host["total"], abs=0.05)
    assert profile["phases"]["device_ms"] is None  # no device on the CPU


def event(name, start_ms, end_ms, thread=1, kernels=(), annotation=False, device=DeviceType.CPU):
    """A profile event as ``torch.profiler`` gives it, times in milliseconds."""
    result = FunctionEvent(
        id=0,
        name=name,
        thread=thread,
        start_us=1000 * start_ms,
        end_us=1000 * end_ms,
        is_user_annotation=annotation,
        device_type=device,
        use_device="cuda",
    )
    for kernel, milliseconds in kernels:
        result.append_kernel(kernel, 0, 1000 * milliseconds)
    return result


def cuda_profile_events():
    """A guided step (0-100 ms) and an unguided one (200-250 ms), as a CUDA profile lists them."""
    ranges = PROFILER_RANGES
    return [
        event(ranges["step"], 0, 100, annotation=True),
        event(ranges["unet"], 1, 30, annotation=True),
        event(ranges["decode"], 31, 40, annotation=True),
        event(ranges["alignment_training"], 41, 60, annotation=True),
        event(ranges["guidance_loss"], 61, 70, annotation=True),
        event(ranges["guidance_backward"], 71, 95, annotation=True),
        event("aten::convolution", 2, 28, kernels=[("sm90_conv", 20)]),
        event("cudaLaunchKernel", 3, 4),
        event("aten::addmm", 32, 38, kernels=[("sm90_gemm", 6), ("sm90_gemm", 1)]),
        # The backward runs on the autograd engine's own thread, while the main thread waits in its range.
        event("aten::convolution_backward", 72, 90, thread=2, kernels=[("sm90_conv_dgrad", 15)]),
        event("aten::add", 96, 97, kernels=[("elementwise", 2)]),
        # Device-side events and the GPU's copy of a range: their time comes with the operator that launched them.
        event("sm90_conv", 5, 25, device=DeviceType.CUDA),
        event(ranges["step"], 5, 99, annotation=True, device=DeviceType.CUDA),
        event("some.other.annotation", 2, 3, annotation=True),
        event(ranges["step"], 200, 250, annotation=True),
        event(ranges["unet"], 201, 240, annotation=True),
        event("aten::convolution", 202, 239, kernels=[("sm90_conv", 30)]),
    ]


def test_phases_of_a_cuda_profile_take_each_kernel_from_the_range_its_launch_started_in():
    ranges, ops = profile_records(cuda_profile_events())
    assert [span.name for span in ranges].count(PROFILER_RANGES["step"]) == 2
    assert "sm90_conv" not in {op.name for op in ops} and "some.other.annotation" not in {op.name for op in ops}
    steps = profiled_steps(ranges, ops)
    assert [step.guided for step in steps] == [True, False]
    profile = summarize(steps[:1], cuda=True, top=2)
    assert profile["phases"]["device_ms"] == {
        "unet": 20.0,
        "decode": 7.0,
        "align_train": 0.0,
        "guidance_loss": 0.0,
        "guidance_backward": 15.0,
        "other": 2.0,
        "total": 44.0,
    }
    assert profile["phases"]["host_ms"] == {
        "unet": 29.0,
        "decode": 9.0,
        "align_train": 19.0,
        "guidance_loss": 9.0,
        "guidance_backward": 24.0,
        "other": 10.0,
        "total": 100.0,
    }
    assert profile["measured"] == "device kernels" and profile["op_ms_per_step"] == 44.0
    assert profile["top"] == [
        {"name": "sm90_conv", "ms_per_step": 20.0, "calls_per_step": 1.0},
        {"name": "sm90_conv_dgrad", "ms_per_step": 15.0, "calls_per_step": 1.0},
    ]
    assert profile["runtime"] == [{"name": "cudaLaunchKernel", "ms_per_step": 1.0, "calls_per_step": 1.0}]
    # Per step over two steps: the unguided step's kernels and calls count too.
    both = summarize(steps, cuda=True)
    assert both["op_ms_per_step"] == 37.0 and both["top"][0] == {
        "name": "sm90_conv",
        "ms_per_step": 25.0,
        "calls_per_step": 1.0,
    }
    with pytest.raises(ValueError, match="no profiled step"):
        summarize([], cuda=True)


def test_overlapping_ranges_are_covered_once():
    spans = [Span("a", 0, 10), Span("b", 5, 20), Span("c", 30, 40), Span("d", 32, 35)]
    assert covered_us(spans) == 30 and covered_us([]) == 0


def test_waits_are_counted_by_place_per_step():
    def caught(message, filename, lineno):
        return warnings.WarningMessage(UserWarning(message), UserWarning, filename, lineno)

    messages = [
        caught("called a synchronizing CUDA operation", "/x/scheduling_ldrps.py", 12),
        caught("called a synchronizing CUDA operation", "/x/scheduling_ldrps.py", 12),
        caught("called a synchronizing CUDA operation", "/x/alignment_ldrps.py", 7),
        caught("something else", "/x/pipeline_ldrps.py", 1),
    ]
    assert waits_per_step(messages, steps=2) == {"scheduling_ldrps.py:12": 1.0, "alignment_ldrps.py:7": 0.5}


def test_the_profiler_sees_the_ranges_on_the_host():
    # The ranges' names as torch.profiler reports them, from a real (CPU) profile.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        with torch.profiler.record_function(PROFILER_RANGES["step"]):
            torch.ones(2).sum()
    ranges, ops = profile_records(profiler.events())
    assert [span.name for span in ranges] == [PROFILER_RANGES["step"]]
    assert {"aten::ones", "aten::sum"} <= {op.name for op in ops}

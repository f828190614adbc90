"""Where a guided step's time goes, from one ``torch.profiler`` run over the pipeline's own ranges.

The pipeline marks each denoising step and its phases with ``torch.profiler.record_function`` ranges
(:data:`~ldrps_pipeline.pipeline_ldrps.PROFILER_RANGES`); nothing here patches or wraps the pipeline. A step
is guided when its ``"ldrps.step"`` range holds a ``"ldrps.guidance_loss"`` range. From the profile of a few
guided steps run free-running (:class:`~ldrps_pipeline.speed_benchmark.timing.StepWindow`):

- each phase's host time: the duration of its ranges on the host (under the profiler, whose few
  microseconds per operator are included); ``total`` is the step range's duration and ``other`` the part
  of it outside every phase range (the scheduler update, the callback);
- on CUDA each phase's device time: the summed durations of the kernels (and copies) launched by the
  operators that started inside its ranges, on any host thread (the autograd engine runs a CUDA backward
  on its own thread, inside the range of the call that waits for it). This is kernel time, not wall
  time: the phases of a step bound by the host's launching add up to less than the step;
- the costliest kernels (on the CPU: operators by their own CPU time), on CUDA the host's CUDA runtime
  and driver calls, and the places where an operation waited for the card.

The phase times replace a timer that swapped the pipeline's methods and synchronised the device around
each phase; those synchronised wall times (``guided_step_phases_ms`` in results before this module) are no
longer measured: ``guided_step_device_ms`` holds the kernel times instead.
"""

import bisect
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.autograd.profiler_util import FunctionEvent

from ldrps_pipeline.pipeline_ldrps import PROFILER_RANGES, LDRPSPipeline
from ldrps_pipeline.speed_benchmark.timing import StepWindow, run_window

PHASES = {
    "unet": PROFILER_RANGES["unet"],
    "decode": PROFILER_RANGES["decode"],
    "align_train": PROFILER_RANGES["alignment_training"],
    "guidance_loss": PROFILER_RANGES["guidance_loss"],
    "guidance_backward": PROFILER_RANGES["guidance_backward"],
}
"""The reported phases of a guided step, by the pipeline range that marks each (``align_train`` keeps the name
the results had before the ranges)."""


@dataclass(frozen=True)
class Span:
    """One pipeline range of a profile: its name and its host interval, in microseconds."""

    name: str
    start_us: float
    end_us: float

    @property
    def duration_us(self) -> float:
        return self.end_us - self.start_us

    def holds(self, time_us: float) -> bool:
        """Whether ``time_us`` lies inside the range (its ends included)."""
        return self.start_us <= time_us <= self.end_us


@dataclass(frozen=True)
class HostOp:
    """One operator or CUDA runtime call the host ran during a profile, on any thread.

    Args:
        name: the operator's or call's name.
        start_us: when it started on the host, on the spans' clock.
        host_us: its host time, the operators it called included.
        self_host_us: its host time without the operators it called.
        kernels: ``(name, microseconds)`` of each kernel or copy it launched on the device.
    """

    name: str
    start_us: float
    host_us: float
    self_host_us: float
    kernels: tuple[tuple[str, float], ...] = ()

    @property
    def kernel_us(self) -> float:
        return sum(micros for _, micros in self.kernels)


def profile_records(events: Iterable[FunctionEvent]) -> tuple[list[Span], list[HostOp]]:
    """The pipeline ranges and the host operators of a profile's events (``profile.events()``), each sorted by
    start. Device-side events are left out: their time comes with the operator that launched them."""
    ranges, ops = [], []
    for event in events:
        if event.is_async or event.device_type != torch.autograd.DeviceType.CPU:
            continue
        start, end = event.time_range.start, event.time_range.end
        if event.is_user_annotation:
            if event.name in PROFILER_RANGES.values():
                ranges.append(Span(event.name, start, end))
            continue
        kernels = tuple((kernel.name, kernel.duration) for kernel in event.kernels)
        ops.append(HostOp(event.name, start, event.cpu_time_total, event.self_cpu_time_total, kernels))
    return sorted(ranges, key=lambda span: span.start_us), sorted(ops, key=lambda op: op.start_us)


@dataclass(frozen=True)
class ProfiledStep:
    """One denoising step of a profile: its ``"ldrps.step"`` range, the phase ranges inside it and the host
    operators that started inside it."""

    span: Span
    phases: list[Span]
    ops: list[HostOp]

    @property
    def guided(self) -> bool:
        return any(span.name == PROFILER_RANGES["guidance_loss"] for span in self.phases)

    def _in_phase(self, op: HostOp, range_name: str | None = None) -> bool:
        """Whether ``op`` started inside a range named ``range_name`` (``None``: any phase range)."""
        return any(span.holds(op.start_us) for span in self.phases if range_name in (None, span.name))

    def host_us(self) -> dict[str, float]:
        """Microseconds of host time by phase, ``other`` (outside every phase range) and ``total``."""
        times = {
            phase: sum(span.duration_us for span in self.phases if span.name == range_name)
            for phase, range_name in PHASES.items()
        }
        total = self.span.duration_us
        return {**times, "other": max(0.0, total - covered_us(self.phases)), "total": total}

    def device_us(self) -> dict[str, float]:
        """Microseconds of device kernels by phase (launched by operators that started inside its ranges),
        ``other`` (launched outside every phase range) and ``total``."""
        times = {
            phase: sum(op.kernel_us for op in self.ops if self._in_phase(op, range_name))
            for phase, range_name in PHASES.items()
        }
        other = sum(op.kernel_us for op in self.ops if not self._in_phase(op))
        return {**times, "other": other, "total": sum(op.kernel_us for op in self.ops)}


def covered_us(spans: Sequence[Span]) -> float:
    """Microseconds covered by the union of ``spans`` (overlaps counted once)."""
    covered, reach = 0.0, float("-inf")
    for span in sorted(spans, key=lambda span: span.start_us):
        start = max(span.start_us, reach)
        if span.end_us > start:
            covered += span.end_us - start
            reach = span.end_us
    return covered


def profiled_steps(ranges: Sequence[Span], ops: Sequence[HostOp]) -> list[ProfiledStep]:
    """The steps of a profile in order, each with the ranges and operators that started inside it (``ranges``
    and ``ops`` sorted by start, as :func:`profile_records` returns them)."""
    starts = [op.start_us for op in ops]
    steps = []
    for step in (span for span in ranges if span.name == PROFILER_RANGES["step"]):
        phases = [span for span in ranges if span.name != step.name and step.holds(span.start_us)]
        inside = ops[bisect.bisect_left(starts, step.start_us) : bisect.bisect_right(starts, step.end_us)]
        steps.append(ProfiledStep(step, phases, list(inside)))
    return steps


def mean_ms(per_step: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean over steps of microsecond figures, in milliseconds rounded to 0.01."""
    return {key: round(sum(step[key] for step in per_step) / len(per_step) / 1000, 2) for key in per_step[0]}


class Tally:
    """Microseconds and calls by name (of kernels, operators or runtime calls), ranked per step."""

    def __init__(self) -> None:
        self.micros: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def add(self, name: str, micros: float) -> None:
        self.micros[name] += micros
        self.calls[name] += 1

    def ranked(self, steps: int, count: int) -> list[dict[str, Any]]:
        """The ``count`` costliest names, with their milliseconds and calls per step of ``steps``."""
        return [
            {
                "name": name[:160],
                "ms_per_step": round(micros / 1000 / steps, 3),
                "calls_per_step": self.calls[name] / steps,
            }
            for name, micros in self.micros.most_common(count)
        ]


def summarize(steps: Sequence[ProfiledStep], cuda: bool, top: int = 12) -> dict[str, Any]:
    """The profile of ``steps``: what was measured, ``op_ms_per_step`` (the device kernels on CUDA, the operators'
    own CPU time on the CPU), the ``top`` costliest by name, on CUDA the host's CUDA runtime and driver calls by
    host time (``runtime``), and ``phases``: ``host_ms`` and, on CUDA, ``device_ms`` (:class:`ProfiledStep`),
    each the mean over the steps.

    Raises:
        ValueError: when ``steps`` is empty.
    """
    if not steps:
        raise ValueError("no profiled step to summarize")
    costs, runtime = Tally(), Tally()
    for op in (op for step in steps for op in step.ops):
        if not cuda:
            costs.add(op.name, op.self_host_us)
        elif op.name.startswith("cu"):
            runtime.add(op.name, op.host_us)
        for name, micros in op.kernels:
            costs.add(name, micros)
    profile = {
        "measured": "device kernels" if cuda else "CPU operators (self time)",
        "steps": len(steps),
        "op_ms_per_step": round(sum(costs.micros.values()) / 1000 / len(steps), 2),
        "top": costs.ranked(len(steps), top),
        "phases": {
            "host_ms": mean_ms([step.host_us() for step in steps]),
            "device_ms": mean_ms([step.device_us() for step in steps]) if cuda else None,
        },
    }
    if cuda:
        profile["runtime"] = runtime.ranked(len(steps), 8)
    return profile


def waits_per_step(caught: Iterable[warnings.WarningMessage], steps: int) -> dict[str, float]:
    """``{file:line: calls per step}`` of the synchronisations ``torch.cuda.set_sync_debug_mode("warn")`` reported
    among the ``caught`` warnings, most frequent first."""
    places = Counter(
        f"{Path(warning.filename).name}:{warning.lineno}" for warning in caught if "synchroniz" in str(warning.message)
    )
    return {place: calls / steps for place, calls in places.most_common()}


def profile_guided_steps(
    pipe: LDRPSPipeline, image: torch.Tensor, *, warmup: int, guided: int, seed: int, top: int = 12
) -> dict[str, Any]:
    """Profile ``guided`` guided steps of ``pipe`` on ``image`` after ``warmup`` of them (:func:`summarize`).

    The steps run free-running in one short restoration, all of it under ``torch.profiler``; only the
    ``guided`` steps are summarised. ``op_ms_per_step`` set against the step's unprofiled time tells a
    device-bound step (close to it: only fewer or faster kernels help) from one bound by the host's launching
    of them (well below it: CUDA graphs, ``torch.compile`` or fewer launches help). On CUDA ``syncs`` adds where
    in the Python code an operation waited for the card inside those steps (:func:`waits_per_step`).

    Raises:
        RuntimeError: when the profile does not hold the ``guided`` guided steps (the pipeline marked no ranges).
    """
    device = pipe.device
    cuda = device.type == "cuda"
    activity = torch.profiler.ProfilerActivity
    window = StepWindow(device, pipe.posterior_scheduler, guided=True, warmup=warmup, steps=guided, sync_debug=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.profiler.profile(activities=[activity.CPU, activity.CUDA] if cuda else [activity.CPU]) as profiler:
            run_window(pipe, image, window, seed)
    # The run stopped right after the window's last step: its guided steps after the warm-up are the window's.
    steps = [step for step in profiled_steps(*profile_records(profiler.events())) if step.guided][warmup:]
    if len(steps) != guided:
        raise RuntimeError(
            f"the profile holds {len(steps)} guided steps after the warm-up, not {guided}: does the pipeline mark "
            f"its steps with the {PROFILER_RANGES['step']!r} and {PROFILER_RANGES['guidance_loss']!r} ranges?"
        )
    profile = summarize(steps, cuda, top)
    if cuda:
        profile["syncs"] = waits_per_step(caught, guided)
    return profile

"""The speed benchmark's results: a row of the table, the environment of the run, the JSON-ready results and
the markdown table with its notes."""

import platform
from dataclasses import asdict, dataclass
from typing import Any

import diffusers
import torch
import transformers

from ldrps_pipeline.evaluation.provenance import git_commit
from ldrps_pipeline.speed_benchmark.operations import StepWork
from ldrps_pipeline.speed_benchmark.specs import FAST_SCHEDULE, PAPER_SCHEDULE, Schedule, StepCounts
from ldrps_pipeline.speed_benchmark.timing import GIB, Measurement, extrapolate

HOST_LABEL = "guided step, host time to issue each phase (ms)"
DEVICE_LABEL = "guided step, device time of each phase's kernels (ms)"
PHASE_RESULTS = {"guided_step_host_ms": HOST_LABEL, "guided_step_device_ms": DEVICE_LABEL}
"""The results' phase figures by configuration (host times; device kernel times, on CUDA only), and their labels."""


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
        return extrapolate(self.counts, self.measurement.unguided_step, self.measurement.guided_step)

    @property
    def free_running_seconds_per_image(self) -> float:
        """Extrapolated as :attr:`seconds_per_image`, from the free-running steps: a real restoration's pace."""
        m = self.measurement
        return extrapolate(self.counts, m.free_running_unguided_step, m.free_running_guided_step)

    @property
    def tflop_per_image(self) -> float:
        """The counted operations of the full schedule's steps, in TFLOP."""
        return extrapolate(self.counts, self.work.unguided_tflop, self.work.guided_tflop)

    @property
    def tflops(self) -> float:
        """The achieved rate, TFLOP per second: what fraction of the card's peak the configuration uses."""
        return self.tflop_per_image / self.seconds_per_image

    def log_line(self) -> str:
        """The row's figures in one line, for the log."""
        m, work = self.measurement, self.work
        peak = f", peak {m.peak_gib:.2f} GiB ({m.peak_reserved_gib:.2f} reserved)" if m.peak_gib is not None else ""
        return (
            f"{self.name}: {m.guided_step:.4f} s/guided step, {m.unguided_step:.4f} s/unguided step{peak}; "
            f"{self.seconds_per_image:.1f} s/image extrapolated from {len(m.guided_times)} guided + "
            f"{len(m.unguided_times)} unguided steps, {self.free_running_seconds_per_image:.1f} s/image free-running "
            f"({m.free_running_guided_step:.4f} s/guided step, {m.free_running_unguided_step:.4f} s/unguided step); "
            f"{work.guided_tflop:.2f} TFLOP/guided step, {work.unguided_tflop:.2f} TFLOP/unguided step, "
            f"{self.tflops:.1f} TFLOP/s; output finite: {m.finite}"
        )


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def environment(device: torch.device, commit: str | None) -> dict[str, Any]:
    """The card, software versions, commit and the float32 matrix settings of the run."""
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "card": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "card_memory_gib": torch.cuda.get_device_properties(device).total_memory / GIB if cuda else None,
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


def row_results(rows: list[Row]) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts, with their extrapolated figures and the speed-up against the first row."""
    baseline = rows[0].seconds_per_image if rows else None
    return [
        {
            **asdict(row),
            "seconds_per_image": row.seconds_per_image,
            "free_running_seconds_per_image": row.free_running_seconds_per_image,
            "speedup": baseline / row.seconds_per_image,
            "tflop_per_image": row.tflop_per_image,
            "tflops": row.tflops,
        }
        for row in rows
    ]


def phases_line(name: str, label: str, phases: dict[str, float]) -> str:
    """One line of milliseconds by phase of ``name``'s guided step (``label``: one of :data:`PHASE_RESULTS`' labels),
    for the log and the table."""
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
    """The compact markdown table of the results, with notes on how the numbers were made and the checks."""
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
    for key, label in PHASE_RESULTS.items():
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

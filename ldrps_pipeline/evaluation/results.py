"""What a quality benchmark run measured: the scores of every restoration, their summary over seeds, the markdown
table, the JSON file and the environment the run ran in. Shared by both runs of ``ldrps-benchmark``: the held-out
crops (:mod:`~ldrps_pipeline.evaluation.quality_benchmark`) and your own pairs
(:mod:`~ldrps_pipeline.evaluation.paired_images`)."""

import json
import os
import platform
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ldrps_pipeline.evaluation.provenance import git_commit
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline


@dataclass(frozen=True)
class Score:
    """The scores of one restoration: PSNR (RGB, dB), SSIM (Y), LPIPS (AlexNet; ``None`` when not measured), and
    its run time in seconds."""

    seed: int | None
    psnr: float
    ssim_y: float
    seconds: float
    lpips: float | None = None


@dataclass(frozen=True, kw_only=True)
class Record(Score):
    """One scored restoration of one degraded image: its :class:`Score` and what was restored.

    ``degradation`` is the degradation's name for the held-out crops, the pairs' label for your own pairs; ``image``
    names the clean image (``"<photo>/<index>"`` for a crop, the shared file stem for a pair).
    """

    degradation: str
    method: str
    image: str


@dataclass(frozen=True)
class Summary:
    """One row of the table: mean and standard deviation over seeds of the per-seed means over images.

    The LPIPS fields are ``None`` when LPIPS was not measured.
    """

    degradation: str
    method: str
    oracle: bool
    psnr_mean: float
    psnr_std: float
    ssim_y_mean: float
    ssim_y_std: float
    lpips_mean: float | None
    lpips_std: float | None
    images: int
    seeds: int


@dataclass
class BenchmarkResults:
    """Everything a benchmark run measured, with its configuration (a dataclass), the environment it ran in, and
    the notes printed under the table."""

    config: Any
    environment: dict[str, Any]
    records: list[Record] = field(default_factory=list)
    oracles: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[Summary]:
        """One :class:`Summary` per (degradation, method), in the order they were measured."""
        groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
        for record in self.records:
            groups[record.degradation, record.method].append(record)
        rows = []
        for (degradation, method), records in groups.items():
            psnr_mean, psnr_std = _mean_std_over_seeds(records, "psnr")
            ssim_mean, ssim_std = _mean_std_over_seeds(records, "ssim_y")
            lpips_mean, lpips_std = (
                _mean_std_over_seeds(records, "lpips") if all(r.lpips is not None for r in records) else (None, None)
            )
            rows.append(
                Summary(
                    degradation=degradation,
                    method=method,
                    oracle=method in self.oracles,
                    psnr_mean=psnr_mean,
                    psnr_std=psnr_std,
                    ssim_y_mean=ssim_mean,
                    ssim_y_std=ssim_std,
                    lpips_mean=lpips_mean,
                    lpips_std=lpips_std,
                    images=len({r.image for r in records}),
                    seeds=len({r.seed for r in records}),
                )
            )
        return rows

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict: ``config``, ``environment``, ``notes``, ``summary`` and every ``record``."""
        return {
            "config": asdict(self.config),
            "environment": self.environment,
            "notes": self.notes,
            "summary": [asdict(row) for row in self.summary()],
            "records": [asdict(record) for record in self.records],
        }


def _mean_std_over_seeds(records: Sequence[Record], metric: str) -> tuple[float, float]:
    by_seed: dict[int | None, list[float]] = defaultdict(list)
    for record in records:
        by_seed[record.seed].append(getattr(record, metric))
    means = [statistics.fmean(values) for values in by_seed.values()]
    return statistics.fmean(means), statistics.stdev(means) if len(means) > 1 else 0.0


def format_table(results: BenchmarkResults) -> str:
    """A markdown table, one row per degradation and method, with PSNR and SSIM (and LPIPS, when measured) as
    ``mean ± std`` over seeds, then the run's notes."""
    rows = results.summary()
    with_lpips = any(row.lpips_mean is not None for row in rows)
    header = "| degradation | method | PSNR (dB) | SSIM (Y) |" + (" LPIPS |" if with_lpips else "")
    lines = [header, "|---|---|---|---|" + ("---|" if with_lpips else "")]
    for row in rows:
        label = f"{row.method} (oracle)" if row.oracle else row.method
        line = (
            f"| {row.degradation} | {label} | {row.psnr_mean:.2f} ± {row.psnr_std:.2f} "
            f"| {row.ssim_y_mean:.4f} ± {row.ssim_y_std:.4f} |"
        )
        if with_lpips:
            line += " - |" if row.lpips_mean is None else f" {row.lpips_mean:.4f} ± {row.lpips_std:.4f} |"
        lines.append(line)
    lines.append("")
    lines.extend(results.notes)
    if results.oracles:
        lines.append("(oracle): given the true degradation, not blind.")
    return "\n".join(lines)


def write_json(results: BenchmarkResults, path: Path) -> None:
    """Write ``results.to_json()`` to ``path``, a new file (parent folders are created).

    Raises:
        FileExistsError: when ``path`` exists; it is never overwritten.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x") as file:
        file.write(json.dumps(results.to_json(), indent=2) + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(pipe: LDRPSPipeline) -> dict[str, Any]:
    """The software and machine a benchmark runs on: commit, versions, CPU, threads and accelerator."""
    import diffusers

    device = pipe.device
    return {
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "accelerator": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }

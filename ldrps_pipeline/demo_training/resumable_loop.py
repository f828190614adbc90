"""The one training loop of every phase: budgets, learning-rate schedule, logging and resumable checkpoints.

A phase (the VAE's, the UNet's) supplies a :class:`PhaseTrainer`: its optimiser, one optimisation step and
its state. :func:`run_phase` runs steps until the phase's budget (wall-clock minutes or a step count,
whichever ends first) is spent, with linear warm-up and cosine decay driven by the fraction of the budget
used, and the last ``--hires-fraction`` of the phase at ``--hires-size`` crops. It writes
``<work-dir>/<name>_checkpoint.pt`` (the trainer's state, the step count, the time used and the random
states) every ``--checkpoint-minutes``, at the end and before stopping for ``--stop-after-steps``, and
continues from that checkpoint when it exists, so an interrupted command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ldrps_pipeline.demo_training.atomic_files import save_torch
from ldrps_pipeline.demo_training.training_log import TrainingLog

__all__ = [
    "PhasePlan",
    "PhaseProgress",
    "PhaseTrainer",
    "StopRequested",
    "batch_and_size",
    "learning_rate",
    "run_phase",
]


def learning_rate(progress: float, peak: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction, then cosine decay to 2 % of ``peak``."""
    if progress < warmup:
        return peak * max(progress / warmup, 0.01)
    q = min(1.0, (progress - warmup) / max(1e-8, 1.0 - warmup))
    return peak * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * q)))


def batch_and_size(options: argparse.Namespace, batch: int, hires: bool) -> tuple[int, int]:
    """The batch and crop size of a step: ``batch`` at ``--crop-size``, or as many pixels at ``--hires-size``."""
    if not hires:
        return batch, options.crop_size
    ratio = (options.hires_size / options.crop_size) ** 2
    return max(1, round(batch / ratio)), options.hires_size


@dataclass
class PhaseProgress:
    """Budget bookkeeping of one training phase."""

    minutes: float
    max_steps: int
    hires_fraction: float
    step: int = 0
    elapsed: float = 0.0

    def fraction(self) -> float:
        """Fraction of the phase done: the larger of time used and steps done."""
        values = [0.0]
        if self.minutes > 0:
            values.append(self.elapsed / (60.0 * self.minutes))
        if self.max_steps > 0:
            values.append(self.step / self.max_steps)
        if self.minutes <= 0 and self.max_steps <= 0:
            return 1.0
        return max(values)

    def hires(self) -> bool:
        """Whether the phase is in its final, higher-resolution part."""
        return self.hires_fraction > 0 and self.fraction() >= 1.0 - self.hires_fraction


@dataclass(frozen=True)
class PhasePlan:
    """What one phase runs: its name, budget, peak learning rate, batch and data seed."""

    name: str
    """``vae`` or ``unet``: the log's curve, the checkpoint's file name and the printed prefix."""
    minutes: float
    max_steps: int
    peak_lr: float
    batch: int
    """The batch at ``--crop-size`` (see :func:`batch_and_size`)."""
    seed: int
    """Seed of the generator that draws the phase's data and noise (its state is checkpointed)."""


class PhaseTrainer(Protocol):
    """One phase's models, optimiser and step, as :func:`run_phase` drives them."""

    optimizer: torch.optim.Optimizer
    log_decimals: dict[str, int]
    """The names of the metrics ``step`` returns, in the log's order, with the decimals they are logged with."""

    def step(self, batch: int, size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One optimisation step on ``batch`` crops of ``size`` pixels; returns its metrics as scalar tensors."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The models' and optimiser's state to checkpoint."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's state."""
        ...


class StopRequested(Exception):
    """Raised when ``--stop-after-steps`` is reached (after a checkpoint was written)."""


def run_phase(
    trainer: PhaseTrainer, plan: PhasePlan, options: argparse.Namespace, log: TrainingLog, device: torch.device
) -> PhaseProgress:
    """Run (or continue) a phase until its budget is spent; returns the steps done and the time used.

    Raises:
        StopRequested: after ``--stop-after-steps`` steps of this invocation, once they are checkpointed.
    """
    progress = PhaseProgress(plan.minutes, plan.max_steps, options.hires_fraction)
    generator = torch.Generator().manual_seed(plan.seed)
    checkpoint_path = options.work_dir / f"{plan.name}_checkpoint.pt"
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        trainer.load_state_dict(state)
        progress.step, progress.elapsed = state["step"], state["elapsed"]
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        print(f"[{plan.name}] resuming at step {progress.step} ({progress.elapsed / 60:.1f} min done)", flush=True)

    def checkpoint() -> None:
        state = {
            **trainer.state_dict(),
            "step": progress.step,
            "elapsed": progress.elapsed,
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        save_torch(state, checkpoint_path)
        log.save()

    windows: dict[str, list[float]] = {name: [] for name in trainer.log_decimals}
    last_checkpoint = time.monotonic()
    steps_this_run = 0
    while progress.fraction() < 1.0:
        start = time.monotonic()
        lr = learning_rate(progress.fraction(), plan.peak_lr, options.warmup)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr
        batch, size = batch_and_size(options, plan.batch, progress.hires())
        metrics = trainer.step(batch, size, generator)
        progress.step += 1
        steps_this_run += 1
        progress.elapsed += time.monotonic() - start
        for name, value in metrics.items():
            windows[name].append(value.item())
        if progress.step % options.log_every == 0:
            entry: dict[str, Any] = {"step": progress.step, "minutes": round(progress.elapsed / 60, 3)}
            for name, decimals in trainer.log_decimals.items():
                entry[name] = round(float(np.mean(windows[name])), decimals)
                windows[name].clear()
            entry.update(lr=lr, size=size, batch=batch)
            log.record[plan.name].append(entry)
            print(f"[{plan.name}] {json.dumps(entry)}", flush=True)
        if time.monotonic() - last_checkpoint > 60 * options.checkpoint_minutes:
            checkpoint()
            last_checkpoint = time.monotonic()
        if options.stop_after_steps and steps_this_run >= options.stop_after_steps:
            checkpoint()
            raise StopRequested
    checkpoint()
    return progress

"""The one resumable training loop (``demo_training.resumable_loop``), driven by a tiny linear-regression trainer."""

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ldrps_pipeline.demo_training.resumable_loop import (
    PhasePlan,
    PhaseProgress,
    StopRequested,
    batch_and_size,
    learning_rate,
    run_phase,
)
from ldrps_pipeline.demo_training.training_log import TrainingLog


class LinearTrainer:
    """Fits y = x1 + x2 + x3 with SGD; records what each step was given."""

    log_decimals = {"loss": 6, "weight_norm": 4}

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.calls: list[tuple[int, int, float]] = []
        self.losses: list[float] = []

    def step(self, batch: int, size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        self.calls.append((batch, size, self.optimizer.param_groups[0]["lr"]))
        x = torch.randn(batch, 3, generator=generator) + 0.01 * torch.randn(batch, 3)  # both random states
        loss = F.mse_loss(self.model(x), x.sum(dim=1, keepdim=True))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.losses.append(loss.item())
        return {"loss": loss.detach(), "weight_norm": self.model.weight.detach().norm()}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


PLAN = PhasePlan("vae", minutes=0.0, max_steps=6, peak_lr=0.1, batch=8, seed=5)


def loop_options(work_dir: Path, **overrides: Any) -> argparse.Namespace:
    options = {
        "work_dir": work_dir,
        "crop_size": 16,
        "hires_size": 32,
        "hires_fraction": 0.5,
        "warmup": 0.2,
        "log_every": 1,
        "checkpoint_minutes": 100.0,
        "stop_after_steps": 0,
    }
    return argparse.Namespace(**{**options, **overrides})


def new_log(work_dir: Path) -> TrainingLog:
    return TrainingLog.open(work_dir, {"seed": 0}, {"vae": 4})


def without_wall_clock(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in entry.items() if k != "minutes"} for entry in entries]


def test_a_resumed_phase_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    straight = LinearTrainer()
    (tmp_path / "straight").mkdir()
    log = new_log(tmp_path / "straight")
    progress = run_phase(straight, PLAN, loop_options(tmp_path / "straight"), log, torch.device("cpu"))
    assert progress.step == 6

    work = tmp_path / "resumed"
    work.mkdir()
    interrupted_runs = 0
    while True:
        trainer = LinearTrainer()  # a fresh process: new models, log reopened from its file
        resumed_log = new_log(work)
        try:
            run_phase(trainer, PLAN, loop_options(work, stop_after_steps=4), resumed_log, torch.device("cpu"))
            break
        except StopRequested:
            interrupted_runs += 1
            assert len(trainer.calls) == 4  # stopped after this invocation's 4 steps
    assert interrupted_runs == 1 and len(trainer.calls) == 2  # the second invocation ran the last 2 steps
    assert torch.equal(trainer.model.weight, straight.model.weight)
    assert torch.equal(trainer.model.bias, straight.model.bias)
    saved = json.loads((work / "training_log.json").read_text())
    assert without_wall_clock(saved["vae"]) == without_wall_clock(log.record["vae"])
    assert [entry["step"] for entry in saved["vae"]] == [1, 2, 3, 4, 5, 6]
    assert saved["wall_seconds"] > 0


def test_a_finished_phase_runs_no_more_steps(tmp_path: Path) -> None:
    run_phase(LinearTrainer(), PLAN, loop_options(tmp_path), new_log(tmp_path), torch.device("cpu"))
    again = LinearTrainer()
    progress = run_phase(again, PLAN, loop_options(tmp_path), new_log(tmp_path), torch.device("cpu"))
    assert again.calls == [] and progress.step == 6
    assert not torch.equal(again.model.weight, LinearTrainer().model.weight)  # the checkpoint's weights


def test_schedule_batches_and_log_entries(tmp_path: Path) -> None:
    trainer = LinearTrainer()
    log = new_log(tmp_path)
    run_phase(trainer, PLAN, loop_options(tmp_path, log_every=2), log, torch.device("cpu"))
    # the first half at the crop size, the last half at the hires size with a 4x smaller batch
    assert [(batch, size) for batch, size, _ in trainer.calls] == [(8, 16)] * 3 + [(2, 32)] * 3
    expected_lr = [learning_rate(step / 6, 0.1, 0.2) for step in range(6)]
    assert [lr for _, _, lr in trainer.calls] == pytest.approx(expected_lr)
    entries = log.record["vae"]
    assert [entry["step"] for entry in entries] == [2, 4, 6]
    assert list(entries[0]) == ["step", "minutes", "loss", "weight_norm", "lr", "size", "batch"]
    for entry, pair in zip(entries, (trainer.losses[0:2], trainer.losses[2:4], trainer.losses[4:6]), strict=True):
        assert entry["loss"] == round(sum(pair) / 2, 6)
        assert entry["lr"] == pytest.approx(expected_lr[entry["step"] - 1])
    assert entries[0]["size"] == 16 and entries[-1]["size"] == 32 and entries[-1]["batch"] == 2
    assert entries[-1]["loss"] < entries[0]["loss"]


def test_checkpoints_are_written_on_the_way(tmp_path: Path) -> None:
    log = new_log(tmp_path)
    run_phase(LinearTrainer(), PLAN, loop_options(tmp_path, checkpoint_minutes=0.0), log, torch.device("cpu"))
    state = torch.load(tmp_path / "vae_checkpoint.pt", weights_only=False)
    assert state["step"] == 6 and set(state) >= {"model", "optimizer", "elapsed", "generator", "torch_rng"}
    assert json.loads((tmp_path / "training_log.json").read_text())["vae"] == log.record["vae"]


def test_progress_is_the_larger_of_time_and_steps() -> None:
    progress = PhaseProgress(minutes=2.0, max_steps=10, hires_fraction=0.25, step=3, elapsed=60.0)
    assert progress.fraction() == 0.5 and not progress.hires()
    progress.step = 8
    assert progress.fraction() == 0.8 and progress.hires()
    assert PhaseProgress(minutes=0.0, max_steps=0, hires_fraction=0.0).fraction() == 1.0
    assert not PhaseProgress(minutes=0.0, max_steps=4, hires_fraction=0.0, step=3).hires()


def test_batch_and_size_keep_the_pixels_per_batch() -> None:
    options = argparse.Namespace(crop_size=64, hires_size=128)
    assert batch_and_size(options, 32, hires=False) == (32, 64)
    assert batch_and_size(options, 32, hires=True) == (8, 128)
    assert batch_and_size(options, 2, hires=True) == (1, 128)


def test_learning_rate_schedule() -> None:
    peak = 1e-3
    assert learning_rate(0.0, peak, 0.1) < 0.1 * peak
    assert learning_rate(0.1, peak, 0.1) == pytest.approx(peak)
    assert learning_rate(0.55, peak, 0.1) == pytest.approx(0.51 * peak)
    assert learning_rate(1.0, peak, 0.1) == pytest.approx(0.02 * peak)

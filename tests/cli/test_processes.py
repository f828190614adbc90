"""A run over two CPU processes (ldrps_pipeline/cli/processes.py): accelerate splits the images, each is restored
exactly once, and the processes' records end in one manifest."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
from command_line import refused

from ldrps_pipeline.cli import restore as cli
from ldrps_pipeline.cli.processes import RUN_ID_VARIABLE, launch_command


def test_two_processes_restore_every_image_exactly_once_into_one_manifest(model, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    names = [f"p{i}.png" for i in range(5)]
    for name in names:
        PIL.Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(photos / name)
    out = tmp_path / "out"
    out.mkdir()
    (out / "p4.png").write_bytes(b"done before")  # an output from an earlier run: skipped, not redone
    command = [str(Path(sys.executable).parent / "ldrps-restore"), str(photos), "-o", str(out), "--num-processes", "2"]
    # The tiny saved model (no warm-up of f): this checks the processes' shares and the manifest, not a restoration.
    command += ["--model", model]
    command += ["--steps", "2", "--recurrences", "0", "--device", "cpu", "--quiet"]
    completed = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    records = [json.loads(line) for line in (out / "ldrps-manifest.jsonl").read_text().splitlines()]
    assert sorted(Path(r["input"]).name for r in records) == names  # each image once
    done = [r for r in records if r["status"] == "done"]
    assert len(done) == 4 and {r["process"] for r in done} == {0, 1}  # both processes worked
    assert [r["status"] for r in records if r["input"].endswith("p4.png")] == ["skipped"]
    assert len({r["run"] for r in records}) == 1
    assert sorted(p.name for p in out.iterdir()) == ["ldrps-manifest.jsonl", *names]  # no parts left
    assert (out / "p4.png").read_bytes() == b"done before"


def test_the_launch_command_is_accelerate_launch_of_this_module():
    command = launch_command(["photos", "-o", "out"], 4)
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and "--num_processes=4" in command
    assert command[-5:] == ["-m", "ldrps_pipeline.cli.restore", "photos", "-o", "out"]


def test_options_that_contradict_a_launch_are_refused(model, tmp_path, capsys, monkeypatch):
    image = tmp_path / "a.png"
    PIL.Image.new("RGB", (8, 8)).save(image)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as accelerate launch --num_processes 2 sets it
    argv = [image, "-o", tmp_path / "out", "--model", model]
    assert "--num-processes 3 inside a launch of 2 processes" in refused(
        cli.main, capsys, [*argv, "--num-processes", "3"]
    )
    assert "each uses its own device" in refused(cli.main, capsys, [*argv, "--device", "cuda:1"])


def test_a_raw_accelerate_launch_exits_0_without_a_traceback_and_says_what_failed(model, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / "good.png")
    (photos / "text.png").write_text("not an image")
    out = tmp_path / "out"
    # As a user runs it by hand: the launch --num-processes runs (accelerate launch --multi_gpu, the CPU recipe too:
    # --cpu would start one process), without the run id through which --num-processes gives the exit status.
    argv = [photos, "-o", out, "--model", model, "--steps", "1", "--recurrences", "0", "--device", "cpu", "--quiet"]
    command = launch_command(list(map(str, argv)), 2)
    env = {key: value for key, value in os.environ.items() if key != RUN_ID_VARIABLE}
    completed = subprocess.run(
        command, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    manifest = out / "ldrps-manifest.jsonl"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(r["status"] for r in records) == ["done", "failed"]
    (line,) = [line for line in completed.stderr.splitlines() if "exit 0 all the same" in line]
    assert line.startswith(f"ldrps-restore: error: 1 failed (manifest: {manifest});")
    assert "--num-processes N gives the exit status" in line


def test_num_processes_gives_the_run_exit_status_1_when_an_image_failed(tmp_path, monkeypatch):
    manifest = tmp_path / "ldrps-manifest.jsonl"

    def launched(argv, num_processes, run):  # what the processes leave: exit 0, one image failed
        lines = [{"run": run, "status": "done"}, {"run": run, "status": "failed"}, {"run": "other", "status": "done"}]
        manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return 0

    monkeypatch.setattr(cli, "launch", launched)
    assert cli.launched_run_status(["photos"], 2, manifest, num_jobs=2) == 1

"""``ldrps-speed-benchmark`` on CPU with tiny components: the rows, the table, the JSON, the saves, and the
command line's refusals."""

import contextlib
import io
import json
import math

import pytest
import torch
from command_line import forbid, refused

from ldrps_pipeline.speed_benchmark import command
from ldrps_pipeline.speed_benchmark import rows as row_functions
from ldrps_pipeline.speed_benchmark.command import OPTIONAL_ROWS, main
from ldrps_pipeline.speed_benchmark.profiling import PHASES
from ldrps_pipeline.speed_benchmark.rows import RECOMPILE_LIMIT

CONFIGS = [
    "reference",
    "reference-ieee",
    "paper",
    "paper+vae-ckpt",
    "paper+cudnn-autotune",
    "paper+unet-channels-last",
    "paper+vae-channels-last",
    "paper@64",
    "paper-50+1",
    "fast",
    "paper+compile",
    "fast+compile",
    "paper+compile-small-networks",
]
QUICK = ["--steps-measured", "1", "--warmup", "1", "--check-steps", "2", "--breakdown-steps", "2"]
"""The shortest run: for the tests that check what a run records, not the figures of the checks."""
PROFILED_ROWS = {"paper", "paper+cudnn-autotune", "paper+compile", "paper+compile-small-networks"}
"""The rows whose guided step is timed phase by phase and profiled."""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("speed") / "speed.json"
    output = io.StringIO()
    # What the JSON file held after each save.
    snapshots = []
    run_benchmark = command.run

    def run_recording_saves(args, log=print, save=None):
        def recording_save(results):
            save(results)
            snapshots.append(json.loads(path.read_text()))

        return run_benchmark(args, log, recording_save)

    # --compile's rows with dynamo's "eager" backend: this checks the benchmark's plumbing in seconds;
    # inductor (minutes of C++ compilation on CPU) is checked on CUDA by tests/pipeline/test_gpu.py.
    # QUICK's step counts but two timed guided steps (so that the measured guided and unguided counts differ): the
    # fixture checks what a run records, in about 90 s of the suite's budget (the default counts took 160 s).
    argv = ["--tiny", "--steps-measured", "2", "--warmup", "1", "--check-steps", "2", "--breakdown-steps", "2"]
    argv += ["--dtype", "bfloat16", "--compile", "--compile-backend", "eager"]
    torch._dynamo.reset()  # compiled code is cached per code object, across tests: start empty
    try:
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output):
            patch.setattr(command, "run", run_recording_saves)
            status = main([*argv, "--json", str(path)])
    finally:
        torch._dynamo.reset()
    return status, output.getvalue(), json.loads(path.read_text()), snapshots


def test_runs_every_configuration_and_prints_the_table(run):
    status, log, results, _ = run
    assert status == 0
    assert [row["name"] for row in results["rows"]] == CONFIGS
    table = [line for line in log.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| config | dtype |") and "speed-up vs reference | PFLOP/image | TFLOP/s |" in table[0]
    # The table marks the row that is not run separately with " *".
    assert [line.split("|")[1].strip() for line in table[1:]] == [
        f"{name} *" if name == "paper-50+1" else name for name in CONFIGS
    ]
    assert "extrapolated from 2 guided + 1 unguided timed steps" in log
    assert "all outputs finite: True" in log
    assert "torch.compile: the first" in log and "compiled_vs_paper_bfloat16" in log
    assert "compiled vs eager decoder gradient (32 px): cosine" in log
    assert "paper's guided step, host time to issue each phase (ms): unet " in log


def test_phases_of_the_guided_step_make_up_the_step(run):
    _, log, results, _ = run
    assert set(results["guided_step_host_ms"]) == PROFILED_ROWS
    for name, phases in results["guided_step_host_ms"].items():
        assert set(phases) == {*PHASES, "other", "total"}
        # Every phase is real work on the host, and with the rest they make up the step (figures rounded to 0.01).
        assert all(phases[phase] > 0 for phase in PHASES) and phases["other"] >= 0
        assert sum(phases[phase] for phase in PHASES) + phases["other"] == pytest.approx(phases["total"], abs=0.05)
        assert f"{name}'s guided step, host time to issue each phase (ms): unet " in log
    # Device kernel times are CUDA's only.
    assert results["guided_step_device_ms"] == {} and "device time of each phase" not in log


def test_profiles_of_the_guided_step_are_reported(run):
    _, log, results, _ = run
    profiles = results["guided_step_profiles"]
    assert set(profiles) == PROFILED_ROWS
    for name, profile in profiles.items():
        assert profile["measured"] == "CPU operators (self time)" and profile["steps"] == 2
        assert "phases" not in profile  # they are the results' guided_step_host_ms
        assert profile["measured_step_ms"] == pytest.approx(
            1000 * next(row for row in results["rows"] if row["name"] == name)["measurement"]["guided_step"], abs=0.01
        )
        row = next(row for row in results["rows"] if row["name"] == name)
        # The row's own free-running steps.
        assert profile["free_running_step_ms"] == pytest.approx(
            1000 * row["measurement"]["free_running_guided_step"], abs=0.01
        )
        assert profile["free_running_unguided_step_ms"] == pytest.approx(
            1000 * row["measurement"]["free_running_unguided_step"], abs=0.01
        )
        assert profile["free_running_seconds_per_image"] == pytest.approx(
            (
                row["counts"]["unguided"] * profile["free_running_unguided_step_ms"]
                + row["counts"]["guided"] * profile["free_running_step_ms"]
            )
            / 1000,
            rel=0.01,
        )
        times = [entry["ms_per_step"] for entry in profile["top"]]
        assert 0 < len(times) <= 12 and times == sorted(times, reverse=True)
        assert 0 < sum(times) <= profile["op_ms_per_step"] + 0.01
        assert f"{name}'s guided step: " in log and "s/image); profiled: CPU operators (self time)" in log


def test_bare_calls_time_the_unet_and_decoder_outside_the_pipeline(run):
    _, log, results, _ = run
    bare = results["checks"]["bare_calls_ms"]
    assert set(bare) == {"unet", "decoder"} and all(value > 0 for value in bare.values())
    assert "called directly, outside the pipeline (ms): UNet" in log


def test_results_are_saved_after_every_measured_row(run):
    _, _, results, snapshots = run
    measured = [row["name"] for row in results["rows"] if row["measured"]]
    # A run cut short by its lease leaves every finished row in the JSON file.
    assert [snapshot["complete"] for snapshot in snapshots] == [False] * len(measured) + [True]
    assert [snapshot["rows"][-1]["name"] for snapshot in snapshots[:-1]] == measured
    assert snapshots[-1] == results and results["settings"]["recompile_limit"] == RECOMPILE_LIMIT


def test_an_existing_json_file_is_never_overwritten(tmp_path, capsys):
    path = tmp_path / "speed.json"
    path.write_text("mine")
    assert "exists" in refused(main, capsys, ["--tiny", "--json", path]) and path.read_text() == "mine"


@pytest.mark.parametrize("option", ["--steps-measured", "--warmup", "--check-steps", "--breakdown-steps"])
def test_step_counts_below_one_are_refused(option, capsys):
    assert f"argument {option}: must be an integer >= 1, got '0'" in refused(main, capsys, ["--tiny", option, 0])


def test_an_unusable_device_is_refused_before_anything_is_built(monkeypatch, capsys):
    forbid(monkeypatch, command, "build_pipeline", "the components were built")
    assert "device 'nonsense' is not a torch device" in refused(main, capsys, ["--tiny", "--device", "nonsense"])


def test_large_input_out_of_memory_retries_with_the_tiled_decoder(tmp_path, monkeypatch):
    measure = row_functions.measure
    tiling = []

    def measure_or_run_out_of_memory(pipe, image, **kwargs):
        tiling.append(pipe.vae.use_tiling)
        if image.shape[-1] == 64 and not pipe.vae.use_tiling:
            raise torch.OutOfMemoryError("simulated")
        return measure(pipe, image, **kwargs)

    monkeypatch.setattr(row_functions, "measure", measure_or_run_out_of_memory)
    skip = [row for row in OPTIONAL_ROWS if row != "paper@large"]
    with contextlib.redirect_stdout(io.StringIO()) as output:
        assert main(["--tiny", *QUICK, "--json", str(tmp_path / "s.json"), "--skip", *skip]) == 0
    by_name = {row["name"]: row for row in json.loads((tmp_path / "s.json").read_text())["rows"]}
    assert by_name["paper@64"]["vae_tiling"] and "paper@64 (tiled VAE)" in output.getvalue()
    # Tiling was on for the retry only, and off again for the rows after it.
    assert tiling.count(True) == 1 and not tiling[-1]


def test_a_failing_compile_mode_is_recorded_and_the_next_mode_is_tried(tmp_path, monkeypatch, fresh_dynamo):
    compile_function = torch.compile

    def no_cuda_graphs(function, **options):
        if options.get("mode") == "reduce-overhead":
            raise RuntimeError("simulated: mode reduce-overhead failed")
        return compile_function(function, **options)

    monkeypatch.setattr(torch, "compile", no_cuda_graphs)
    argv = ["--tiny", *QUICK, "--skip", *OPTIONAL_ROWS, "--compile-backend", "eager"]
    with contextlib.redirect_stdout(io.StringIO()) as output:
        status = main([*argv, "--json", str(tmp_path / "a.json"), "--compile", "reduce-overhead", "default"])
    results = json.loads((tmp_path / "a.json").read_text())
    assert status == 0 and [row["name"] for row in results["rows"]][-2:] == ["paper+compile", "fast+compile"]
    assert results["checks"]["compile_mode"] == "default"
    assert results["checks"]["compile_errors"] == {
        "reduce-overhead": "RuntimeError('simulated: mode reduce-overhead failed')"
    }
    assert "failed with torch.compile mode 'reduce-overhead': RuntimeError('simulated" in output.getvalue()
    # No mode works: the run ends with the rows before the compiled ones.
    with contextlib.redirect_stdout(io.StringIO()):
        status = main([*argv, "--json", str(tmp_path / "b.json"), "--compile", "reduce-overhead"])
    results = json.loads((tmp_path / "b.json").read_text())
    assert status == 0 and results["complete"] and results["rows"][-1]["name"] == "fast"
    assert "compile_mode" not in results["checks"] and list(results["checks"]["compile_errors"]) == ["reduce-overhead"]


def test_a_failing_profiler_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    def no_profiler(*args, **kwargs):
        raise RuntimeError("simulated: CUPTI unavailable")

    monkeypatch.setattr(row_functions, "profile_guided_steps", no_profiler)
    with contextlib.redirect_stdout(io.StringIO()) as output:
        status = main(["--tiny", *QUICK, "--json", str(tmp_path / "s.json"), "--skip", *OPTIONAL_ROWS])
    results = json.loads((tmp_path / "s.json").read_text())
    assert status == 0 and results["complete"] and results["rows"][-1]["name"] == "fast"
    assert "CUPTI unavailable" in results["checks"]["paper_profile_error"]
    # The free-running step does not need the profiler: it is still reported; the phases come from the profile.
    assert "paper" not in results["guided_step_host_ms"]
    assert set(results["guided_step_profiles"]["paper"]) == {
        "measured_step_ms",
        "free_running_step_ms",
        "free_running_unguided_step_ms",
        "free_running_seconds_per_image",
    }
    assert "paper's guided step: " in output.getvalue() and "profiled:" not in output.getvalue().split("| fast |")[-1]


def test_json_numbers_are_finite_and_positive(run):
    _, _, results, _ = run
    for row in results["rows"]:
        m = row["measurement"]
        assert len(m["guided_times"]) == 2 and len(m["unguided_times"]) == 1
        free_running = (m["free_running_guided_step"], m["free_running_unguided_step"])
        for value in (m["guided_step"], m["unguided_step"], row["seconds_per_image"], row["speedup"], row["tflops"]):
            assert math.isfinite(value) and value > 0
        assert all(math.isfinite(value) and value > 0 for value in free_running)
        assert row["free_running_seconds_per_image"] == pytest.approx(
            row["counts"]["guided"] * free_running[0] + row["counts"]["unguided"] * free_running[1]
        )
        assert row["tflop_per_image"] == pytest.approx(
            row["counts"]["unguided"] * row["work"]["unguided_tflop"]
            + row["counts"]["guided"] * row["work"]["guided_tflop"]
        )
        assert m["peak_gib"] is None  # CPU: no device memory statistics
        assert m["finite"]
    rows = {row["name"]: row for row in results["rows"]}
    assert rows["reference"]["dtype"] == "float32" and rows["reference"]["speedup"] == 1.0
    assert rows["reference-ieee"]["dtype"] == "float32" and rows["reference-ieee"]["work"] == rows["reference"]["work"]
    assert all(rows[name]["dtype"] == "bfloat16" for name in CONFIGS[2:])
    assert rows["fast"]["num_samples"] == 1 and rows["paper"]["num_samples"] == 2
    assert rows["paper@64"]["image_size"] == 64 and not rows["paper-50+1"]["measured"]
    assert rows["paper-50+1"]["measurement"] == rows["paper"]["measurement"]
    assert rows["reference"]["counts"] == {"unguided": 100, "guided": 800}
    assert rows["fast"]["counts"] == {"unguided": 15, "guided": 60}
    # Operations per step: a guided step adds the decoder backward; the reference backpropagates both samples
    # at every step; fast has one sample; compiled rows do the same operations as their eager row.
    work = {name: row["work"] for name, row in rows.items()}
    assert work["paper"]["guided_tflop"] > work["paper"]["unguided_tflop"] > 0
    assert work["reference"]["unguided_tflop"] > work["paper"]["unguided_tflop"]
    assert work["fast"]["guided_tflop"] < work["paper"]["guided_tflop"]
    assert work["paper@64"]["guided_tflop"] > 3 * work["paper"]["guided_tflop"]
    assert work["paper+compile"] == work["paper"] and work["fast+compile"] == work["fast"]
    assert work["paper+unet-channels-last"] == work["paper+vae-channels-last"] == work["paper"]


def test_checks_are_reported(run):
    _, _, results, _ = run
    checks = results["checks"]
    assert checks["all_outputs_finite"] is True
    # The reference pattern computes the same restoration; bf16 weights move it a little (measured 0.011 max).
    assert checks["default_float32_vs_reference"]["max_abs"] < 1e-4
    assert checks["paper_bfloat16_vs_reference"]["max_abs"] < 0.1
    # The guidance moves the result far more than bf16 does: the yardstick for the compiled check.
    guidance = checks["paper_bfloat16_vs_guidance_off"]["mean_abs"]
    assert guidance > 5 * checks["paper_bfloat16_vs_reference"]["mean_abs"]
    # The compiled decoder's gradient against eager (dynamo's eager backend here: the same numbers).
    agreement = checks["compiled_decoder_gradient"]
    assert agreement["cosine"] > 0.999 and agreement["norm_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert results["environment"]["diffusers"] and results["settings"]["steps_measured"] == {"guided": 2, "unguided": 1}


def test_skip_leaves_out_the_optional_rows(tmp_path, capsys):
    path = tmp_path / "speed.json"
    optional = list(OPTIONAL_ROWS)
    assert main(["--tiny", *QUICK, "--skip", *optional, "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    assert [row["name"] for row in results["rows"]] == ["reference", "paper", "paper-50+1", "fast"]
    assert results["settings"]["skipped"] == optional
    with pytest.raises(SystemExit):
        main(["--tiny", "--skip", "paper"])
    assert "invalid choice" in capsys.readouterr().err


def test_an_unknown_compile_backend_is_refused_before_anything_is_built(monkeypatch, capsys):
    forbid(monkeypatch, command, "build_pipeline", "the components were built")
    error = refused(main, capsys, ["--tiny", "--compile", "--compile-backend", "nonsense"])
    assert "argument --compile-backend: 'nonsense' is not a torch.compile backend" in error

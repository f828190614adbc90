import logging
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.utils
import numpy as np
import PIL.Image
import pytest
import torch
from command_line import forbid
from command_line import refused as refused_by_argparse
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from ldrps_pipeline import LDRPSPipeline
from ldrps_pipeline.cli import restore as cli
from ldrps_pipeline.cli.arguments import silenced_libraries
from ldrps_pipeline.cli.manifest import DEFAULT_MANIFEST_NAME, read_records
from ldrps_pipeline.hub.loading import resolve_device, resolve_dtype
from tiny_components import tiny_captioner


def write_image(path, height=10, width=14, seed=0):
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(path)
    return path


def restore(model, *args):
    return cli.main([*map(str, args), "--model", model, "--steps", "4", "--recurrences", "1", "--quiet"])


@pytest.fixture
def never_loads(monkeypatch):
    forbid(monkeypatch, cli, "load_pipeline", "the model was loaded")


def refused(capsys, argv):
    """The error message of an ``ldrps-restore`` call that argparse refuses (exit status 2)."""
    return refused_by_argparse(cli.main, capsys, argv)


def test_restores_each_input_under_its_name(model, tmp_path):
    a = write_image(tmp_path / "a.png")
    b = write_image(tmp_path / "b.jpg", 9, 8, seed=1)
    before = a.read_bytes()
    assert restore(model, a, b, "-o", tmp_path / "out") == 0
    assert PIL.Image.open(tmp_path / "out" / "a.png").size == (14, 10)
    assert PIL.Image.open(tmp_path / "out" / "b.png").size == (8, 9)
    assert a.read_bytes() == before


def test_never_writes_over_an_input_and_skips_existing_outputs(model, tmp_path, capsys):
    a = write_image(tmp_path / "a.png")
    before = a.read_bytes()
    # -o is the input's folder: the output takes the suffix _restored and the run goes ahead.
    assert restore(model, a, "-o", tmp_path) == 0
    assert a.read_bytes() == before and PIL.Image.open(tmp_path / "a_restored.png").size == (14, 10)
    # An explicit suffix that would name the input itself is refused before anything runs.
    assert restore(model, a, "-o", tmp_path, "--suffix", "") == 2
    assert "is an input file" in capsys.readouterr().err and a.read_bytes() == before
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"keep me")
    assert restore(model, a, "-o", out) == 0  # skipped and counted, not replaced
    assert (out / "a.png").read_bytes() == b"keep me"
    assert restore(model, a, "-o", out, "--overwrite") == 0
    assert PIL.Image.open(out / "a.png").size == (14, 10)


def test_refuses_colliding_names_missing_files_and_bad_arguments(model, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    a = write_image(tmp_path / "a.png")
    other = write_image(tmp_path / "x" / "a.jpg")
    assert restore(model, a, other, "-o", tmp_path / "out") == 2
    assert "would both be written" in capsys.readouterr().err
    assert restore(model, tmp_path / "missing.png", "-o", tmp_path / "out") == 2
    assert "not found" in capsys.readouterr().err


def test_refuses_an_output_folder_that_is_a_file_before_loading(model, tmp_path, capsys, never_loads):
    a = write_image(tmp_path / "a.png")
    taken = tmp_path / "taken"
    taken.write_bytes(b"keep me")
    for output_dir in (taken, taken / "sub"):
        assert restore(model, a, "-o", output_dir) == 2
        assert f"{taken} is a file, not a folder" in capsys.readouterr().err
    assert taken.read_bytes() == b"keep me"
    (tmp_path / "out" / "a.png").mkdir(parents=True)  # an output name taken by a folder, even with --overwrite
    assert restore(model, a, "-o", tmp_path / "out", "--overwrite") == 2
    assert f"{tmp_path / 'out' / 'a.png'} is a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--steps", "0"),
        ("--steps", "2.5"),
        ("--recurrences", "-1"),
        ("--strength", "5"),
        ("--strength", "0"),
        ("--strength", "nan"),
        ("--guidance-scale", "inf"),
        ("--guidance-scale", "-1"),
        ("--seed", str(2**64)),
    ],
)
def test_refuses_bad_numbers_before_loading(model, tmp_path, capsys, never_loads, option, value):
    a = write_image(tmp_path / "a.png")
    error = refused(capsys, [a, "-o", tmp_path / "out", "--model", model, option, value])
    assert f"argument {option}: must be" in error and repr(value) in error
    assert not (tmp_path / "out").exists()


def test_refuses_a_model_path_that_is_not_a_pipeline_folder_before_loading(tmp_path, capsys, never_loads):
    a = write_image(tmp_path / "a.png")
    (tmp_path / "empty").mkdir()
    for folder, problem in (
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "empty", "is not a diffusers pipeline folder (it has no model_index.json)"),
        (a, "is a file"),
    ):
        error = refused(capsys, [a, "-o", tmp_path / "out", "--model", folder])
        assert f"{folder} {problem}" in error


def test_a_hub_repo_id_goes_to_the_loader(tmp_path, monkeypatch):
    class Loading(Exception):
        pass

    names = []

    def load(name, **options):
        names.append((name, options))
        raise Loading

    monkeypatch.setattr(cli, "load_pipeline", load)
    monkeypatch.chdir(tmp_path)  # no local folder user/repo
    a = write_image(tmp_path / "a.png")
    with pytest.raises(Loading):
        cli.main([str(a), "-o", "out", "--model", "user/repo", "--quiet"])
    with pytest.raises(Loading):
        cli.main(
            [
                str(a),
                "-o",
                "out",
                "--model",
                "user/repo",
                "--variant",
                "fp16",
                "--revision",
                "v2",
                "--captioner",
                "me/vlm",
            ]
            + ["--caption-instruction", "What is it?", "--caption-max-tokens", "12", "--perceptual", "none", "--quiet"]
        )
    with pytest.raises(Loading):
        cli.main([str(a), "-o", "out", "--model", "user/repo", "--prompt", "a cat", "--quiet"])
    defaults = {
        "dtype": torch.float32,
        "allow_pickle": False,  # safetensors only unless --allow-pickle
        "variant": None,
        "revision": None,
        "captioner": None,  # the model's own
        "perceptual": "auto",
        "caption_instruction": None,
        "caption_max_new_tokens": None,
    }
    assert names == [
        ("user/repo", defaults),
        (
            "user/repo",
            {
                **defaults,
                "variant": "fp16",
                "revision": "v2",
                "captioner": "me/vlm",
                "perceptual": "none",
                "caption_instruction": "What is it?",
                "caption_max_new_tokens": 12,
            },
        ),
        ("user/repo", {**defaults, "captioner": "none"}),  # a given prompt needs no captioner
    ]


def test_a_captioner_with_a_given_prompt_is_refused_before_loading(model, tmp_path, capsys, never_loads):
    argv = [write_image(tmp_path / "a.png"), "-o", tmp_path / "out", "--model", model, "--prompt", "a cat"]
    assert "--captioner is not used with --prompt" in refused(capsys, [*argv, "--captioner", "me/vlm"])


def test_a_hub_repo_that_cannot_be_reached_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from huggingface_hub.errors import LocalEntryNotFoundError

    from ldrps_pipeline.hub import loading

    def offline_download(repo_id, filename, **hub_options):
        raise LocalEntryNotFoundError("cannot reach the Hub and the file is not in the local cache")

    monkeypatch.setattr(loading, "hf_hub_download", offline_download)  # what an offline machine gets
    monkeypatch.chdir(tmp_path)
    a = write_image(tmp_path / "a.png")
    assert cli.main([str(a), "-o", "out", "--model", "user/repo", "--quiet"]) == 2
    message = capsys.readouterr().err
    assert "cannot load 'user/repo' from the Hugging Face Hub" in message and "Traceback" not in message
    assert not (tmp_path / "out").exists()


def test_refuses_an_unknown_or_unavailable_device_before_loading(model, tmp_path, capsys, monkeypatch, never_loads):
    argv = [write_image(tmp_path / "a.png"), "-o", tmp_path / "out", "--model", model, "--device"]
    assert "device 'nonsense' is not a torch device" in refused(capsys, [*argv, "nonsense"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "device 'cuda': CUDA is not available" in refused(capsys, [*argv, "cuda"])


def test_console_scripts_are_installed():
    # Installed next to this interpreter by `pip install .`.
    bin_dir = Path(sys.executable).parent
    flags = {"ldrps-restore": "--preset", "ldrps-export-hub": "output_dir"}
    # Side by side: each spends its seconds importing torch and diffusers.
    running = {
        command: subprocess.Popen(
            [str(bin_dir / command), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for command in flags
    }
    for command, process in running.items():
        stdout, stderr = process.communicate()
        assert process.returncode == 0 and flags[command] in stdout, stderr


def test_installed_command_restores_with_the_bundled_demo_model(tmp_path):
    # Runs the installed console script outside the source tree: the package itself must carry the demo model.
    source = write_image(tmp_path / "photo.png", 20, 12)
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "ldrps-restore"), str(source), "-o", "out", "--model", "demo"]
        + ["--steps", "3", "--recurrences", "1", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert PIL.Image.open(tmp_path / "out" / "photo.png").size == (12, 20)
    # --quiet: no loading progress bars, no library or pipeline warnings, no report line
    assert completed.stdout == "" and completed.stderr == ""


def library_output_settings():
    return (
        diffusers_logging.get_verbosity(),
        diffusers_logging.is_progress_bar_enabled(),
        transformers_logging.get_verbosity(),
        transformers_logging.is_progress_bar_enabled(),
        huggingface_hub.utils.are_progress_bars_disabled(),
        logging.getLogger("ldrps_pipeline").level,
    )


def test_silenced_libraries_restores_their_settings(model, tmp_path):
    before = library_output_settings()
    with silenced_libraries():
        assert library_output_settings() == (logging.ERROR, False, logging.ERROR, False, True, logging.ERROR)
        assert not logging.getLogger("ldrps_pipeline.pipeline_ldrps").isEnabledFor(logging.WARNING)
    assert library_output_settings() == before
    assert restore(model, write_image(tmp_path / "a.png"), "-o", tmp_path / "out") == 0  # --quiet
    assert library_output_settings() == before


def test_dtype_option_loads_the_weights_in_that_dtype(model, tmp_path, monkeypatch):
    loaded = []
    load = cli.load_pipeline

    def recording_load(name, **options):
        pipe = load(name, **options)
        loaded.append(pipe.unet.dtype)
        return pipe

    monkeypatch.setattr(cli, "load_pipeline", recording_load)
    a = write_image(tmp_path / "a.png")
    assert restore(model, a, "-o", tmp_path / "bf16", "--dtype", "bfloat16") == 0
    assert PIL.Image.open(tmp_path / "bf16" / "a.png").size == (14, 10)
    # auto: bfloat16 only on a CUDA card that supports it; this CPU gets float32.
    assert restore(model, a, "-o", tmp_path / "auto", "--device", "cpu") == 0
    assert loaded == [torch.bfloat16, torch.float32]


def test_compile_option_compiles_the_pipeline_once(model, tmp_path, monkeypatch):
    # Dynamo's "eager" backend stands in for inductor (minutes of C++ compilation on this CPU).
    compiled = []
    compile_with_inductor = LDRPSPipeline.enable_torch_compile

    def compile_with_eager(pipe, **options):
        compiled.append(options)
        compile_with_inductor(pipe, backend="eager")

    monkeypatch.setattr(LDRPSPipeline, "enable_torch_compile", compile_with_eager)
    a, b = write_image(tmp_path / "a.png"), write_image(tmp_path / "b.png", seed=1)
    torch._dynamo.reset()
    try:
        assert restore(model, a, b, "-o", tmp_path / "out", "--compile") == 0
    finally:
        torch._dynamo.reset()
    assert compiled == [{}]
    assert PIL.Image.open(tmp_path / "out" / "b.png").size == (14, 10)


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float32", "cuda") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("float64", "cpu")


def test_auto_dtype_takes_bfloat16_only_where_the_card_has_it_natively(monkeypatch):
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return native or including_emulation  # a T4 or V100 emulates bfloat16: supported only with emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    native = False
    assert resolve_dtype("auto", "cuda") == torch.float32
    native = True
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    assert asked == [False, False]


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device 'cuda:x' is not a torch device"):
        resolve_device("cuda:x")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available on this machine"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device 'cuda:1': this machine has 1 CUDA device\(s\)"):
        resolve_device("cuda:1")


def test_low_memory_option_tiles_checkpoints_and_splits_the_unet_batch(model, tmp_path, monkeypatch):
    calls = []
    call = LDRPSPipeline.__call__

    def recording_call(pipe, image, **kwargs):
        calls.append((pipe.vae.use_tiling, pipe.vae.is_gradient_checkpointing, kwargs["unet_batch_size"]))
        return call(pipe, image, **kwargs)

    monkeypatch.setattr(LDRPSPipeline, "__call__", recording_call)
    a = write_image(tmp_path / "a.png")
    assert restore(model, a, "-o", tmp_path / "low", "--low-memory") == 0
    assert restore(model, a, "-o", tmp_path / "default") == 0
    assert calls == [(True, True, 1), (False, False, None)]
    assert PIL.Image.open(tmp_path / "low" / "a.png").size == (14, 10)


def test_out_of_device_memory_is_a_clear_error_and_keeps_earlier_outputs(model, tmp_path, monkeypatch, capsys):
    call = LDRPSPipeline.__call__

    def out_of_memory_on_the_second_image(pipe, image, **kwargs):
        if image.shape[:2] == (9, 8):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return call(pipe, image, **kwargs)

    monkeypatch.setattr(LDRPSPipeline, "__call__", out_of_memory_on_the_second_image)
    a, b = write_image(tmp_path / "a.png"), write_image(tmp_path / "b.png", 9, 8, seed=1)
    assert restore(model, b, a, "-o", tmp_path / "out") == 1  # the run goes on after the failure
    error = capsys.readouterr().err
    assert f"ldrps-restore: error: {b}: out of device memory restoring 8x9 px" in error
    assert "--low-memory" in error and "--preset fast" in error and "Traceback" not in error
    assert (tmp_path / "out" / "a.png").is_file() and not (tmp_path / "out" / "b.png").exists()
    # Options already given are not offered again.
    assert restore(model, b, "-o", tmp_path / "again", "--low-memory", "--preset", "fast") == 1
    assert "what needs less memory: a smaller image" in capsys.readouterr().err


def test_a_captioner_by_folder_writes_the_prompts_and_an_instruction_it_cannot_follow_is_refused(
    model, tmp_path, capsys
):
    captioner, processor = tiny_captioner(str(tmp_path))  # a BLIP: captions the image alone
    captioner.save_pretrained(tmp_path / "captioner")
    processor.save_pretrained(tmp_path / "captioner")
    a = write_image(tmp_path / "a.png")
    argv = [a, "-o", tmp_path / "out", "--captioner", tmp_path / "captioner"]
    assert restore(model, *argv, "--caption-max-tokens", "2") == 0
    (record,) = [r for r in read_records(tmp_path / "out" / DEFAULT_MANIFEST_NAME) if r["status"] == "done"]
    assert record["prompt"].split() == ["cat", "cat"]
    assert record["settings"]["captioner"] == str(tmp_path / "captioner")
    capsys.readouterr()
    assert (
        restore(
            model,
            a,
            "-o",
            tmp_path / "asked",
            "--captioner",
            tmp_path / "captioner",
            "--caption-instruction",
            "Say it.",
        )
        == 2
    )
    assert "takes no instruction" in capsys.readouterr().err and not (tmp_path / "asked" / "a.png").exists()


def test_operator_option_restores_with_a_known_operator_and_records_it(model, tmp_path, monkeypatch):
    operators = []
    call = LDRPSPipeline.__call__

    def recording_call(pipe, image, **kwargs):
        operators.append(kwargs["operator"])
        return call(pipe, image, **kwargs)

    monkeypatch.setattr(LDRPSPipeline, "__call__", recording_call)
    a = write_image(tmp_path / "a.png")
    assert restore(model, a, "-o", tmp_path / "known", "--operator", "identity") == 0
    assert restore(model, a, "-o", tmp_path / "learned") == 0
    assert operators == ["identity", None]
    assert PIL.Image.open(tmp_path / "known" / "a.png").size == (14, 10)
    for folder, operator in (("known", "identity"), ("learned", None)):
        (record,) = read_records(tmp_path / folder / "ldrps-manifest.jsonl")
        assert record["status"] == "done" and record["settings"]["operator"] == operator


def test_refuses_an_unknown_operator_before_loading(model, tmp_path, capsys, never_loads):
    a = write_image(tmp_path / "a.png")
    error = refused(capsys, [a, "-o", tmp_path / "out", "--model", model, "--operator", "sharpen"])
    assert "argument --operator: invalid choice: 'sharpen'" in error and "identity" in error

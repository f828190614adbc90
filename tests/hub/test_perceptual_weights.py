"""Perceptual features from each source: torchvision (a stand-in module here, since torchvision cannot be installed
next to the CPU torch wheel), a safetensors state dict in torchvision's key layout, a saved folder, a pipeline folder."""

import sys
import types

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ldrps_pipeline import PerceptualFeatures
from ldrps_pipeline.hub.perceptual_weights import load_perceptual_features


def vgg16_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with torchvision's VGG16 keys for features[:9], plus a classifier key to be ignored."""
    torch.manual_seed(seed)
    state = {f"features.{key}": value for key, value in PerceptualFeatures().features.state_dict().items()}
    return {**state, "classifier.0.weight": torch.zeros(2, 2)}


def assert_same_features(features: PerceptualFeatures, state: dict[str, torch.Tensor]) -> None:
    expected = PerceptualFeatures.from_vgg16_state_dict(state).eval()
    image = torch.rand(1, 3, 8, 8)
    assert not features.training
    assert torch.equal(features(image), expected(image))


@pytest.fixture
def stand_in_torchvision(monkeypatch):
    """A module with torchvision's ``models.vgg16`` / ``VGG16_Weights`` surface, returning a known state dict."""
    state = vgg16_state_dict(seed=1)
    asked = []

    class VGG(nn.Module):
        def state_dict(self, *args, **kwargs):
            return state

    def vgg16(weights):
        asked.append(weights)
        return VGG()

    models = types.SimpleNamespace(vgg16=vgg16, VGG16_Weights=types.SimpleNamespace(IMAGENET1K_V1="IMAGENET1K_V1"))
    module = types.ModuleType("torchvision")
    module.models = models
    monkeypatch.setitem(sys.modules, "torchvision", module)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return state, asked


def test_torchvision_gives_the_imagenet_vgg16_weights_and_auto_takes_them(stand_in_torchvision):
    state, asked = stand_in_torchvision
    assert_same_features(load_perceptual_features("torchvision"), state)
    assert_same_features(load_perceptual_features("auto"), state)
    assert asked == ["IMAGENET1K_V1", "IMAGENET1K_V1"]


def test_without_torchvision_auto_gives_none_and_torchvision_names_the_other_sources(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails
    assert load_perceptual_features("auto") is None
    assert load_perceptual_features("none") is None
    with pytest.raises(ValueError, match="needs torchvision.*safetensors file.*save_pretrained"):
        load_perceptual_features("torchvision")


def test_a_safetensors_state_dict_in_torchvision_layout(tmp_path):
    state = vgg16_state_dict(seed=2)
    save_file(state, tmp_path / "vgg16.safetensors")
    features = load_perceptual_features(str(tmp_path / "vgg16.safetensors"), dtype=torch.float64)
    assert features.dtype == torch.float64
    assert_same_features(features.float(), state)


def test_pickle_and_other_files_are_refused(tmp_path):
    torch.save(vgg16_state_dict(), tmp_path / "vgg16.pth")
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(ValueError, match="vgg16.pth is a pickle file, which is not loaded"):
        load_perceptual_features(str(tmp_path / "vgg16.pth"))
    with pytest.raises(ValueError, match="notes.txt is not a .safetensors file"):
        load_perceptual_features(str(tmp_path / "notes.txt"))


def test_a_saved_folder_or_the_perceptual_folder_of_a_pipeline(tmp_path):
    state = vgg16_state_dict(seed=3)
    PerceptualFeatures.from_vgg16_state_dict(state).save_pretrained(tmp_path / "pipeline" / "perceptual")
    assert_same_features(load_perceptual_features(str(tmp_path / "pipeline" / "perceptual")), state)
    assert_same_features(load_perceptual_features(str(tmp_path / "pipeline")), state)

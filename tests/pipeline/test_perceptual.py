import pytest
import torch
from torch import nn

from ldrps_pipeline import PerceptualFeatures


def torchvision_like_vgg16_features() -> nn.Sequential:
    """The first 10 layers of torchvision's vgg16().features (same indices, random weights)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
    )  # fmt: skip


def test_loads_a_vgg16_state_dict_and_matches_its_relu2_2():
    vgg = torchvision_like_vgg16_features().eval()
    state = {f"features.{k}": v for k, v in vgg.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)  # other keys are ignored
    model = PerceptualFeatures.from_vgg16_state_dict(state).eval()
    image = torch.rand(2, 3, 16, 12)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = vgg[:9]((image - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    assert torch.allclose(model(image), expected, atol=1e-5)
    assert model(image).shape == (2, 128, 8, 6)
    with pytest.raises(ValueError, match="lacks VGG16 feature weights"):
        PerceptualFeatures.from_vgg16_state_dict({"features.0.weight": state["features.0.weight"]})


def test_safetensors_round_trip_and_distance(tmp_path):
    model = PerceptualFeatures(channels=(4, 8)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = PerceptualFeatures.from_pretrained(tmp_path).eval()
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    assert torch.equal(loaded(a), model(a))
    assert loaded.distance(a, a).item() == 0.0
    assert loaded.distance(a, b).item() == pytest.approx(loaded.distance_to_features(a, loaded(b)).item())

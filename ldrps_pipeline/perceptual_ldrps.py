"""VGG16 ``features[:9]`` (through relu2_2) as a diffusers model, for the perceptual terms of LD-RPS.

The layer indices match torchvision's ``vgg16().features``, so a torchvision state dict (or a
safetensors file of it) loads with :meth:`PerceptualFeatures.from_vgg16_state_dict`; a saved
component loads with ``from_pretrained`` like any diffusers model. Inputs are images in [0, 1];
the ImageNet normalisation happens inside.

This module imports no sibling module, so the Hub export can ship it as remote code.
"""

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


HOW_TO_GET_PERCEPTUAL_FEATURES = (
    "load them with load_pipeline(..., perceptual=SOURCE) or ldrps-restore --perceptual SOURCE, where SOURCE is "
    "'torchvision' (torchvision's ImageNet VGG16 weights, where torchvision is installed), a .safetensors file of a "
    "VGG16 state dict in torchvision's key layout, or a folder or Hub repo saved with "
    "PerceptualFeatures.save_pretrained; or pass perceptual=PerceptualFeatures.from_vgg16_state_dict(state_dict)"
)
"""How to get perceptual features: named by every warning and error about a missing source."""


class PerceptualFeatures(ModelMixin, ConfigMixin):
    """VGG16 layers 0-8: conv-relu-conv-relu-maxpool-conv-relu-conv-relu (relu2_2 output).

    Args:
        channels: the widths of the two VGG blocks (64, 128 in VGG16).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, channels: tuple[int, int] = (64, 128)) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c2, c2, 3, padding=1),
            nn.ReLU(),
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_vgg16_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> "PerceptualFeatures":
        """Build from a torchvision VGG16 state dict (keys ``features.N.weight``; other keys are ignored)."""
        model = cls()
        wanted = {k: v for k, v in state_dict.items() if k.split(".")[0] == "features" and int(k.split(".")[1]) < 9}
        missing = set(model.state_dict()) - set(wanted)
        if missing:
            raise ValueError(f"the state dict lacks VGG16 feature weights: {sorted(missing)}")
        model.load_state_dict(wanted)
        return model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """relu2_2 features of images in [0, 1], (N, 3, H, W) -> (N, 128, H/2, W/2)."""
        normalized = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        return self.features(normalized.to(self.dtype))

    def distance(self, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``P(a, b)``: the mean squared difference of the features of two same-shape batches, in float32.

        The parameters are frozen by the pipeline, so only ``image`` (when it requires grad) gets a graph.
        """
        return self.distance_to_features(image, self(reference).float())

    def distance_to_features(self, image: torch.Tensor, reference_features: torch.Tensor) -> torch.Tensor:
        """``P(a, b)`` with the features of ``b`` computed beforehand (for a ``b`` that does not change)."""
        return F.mse_loss(self(image).float(), reference_features)

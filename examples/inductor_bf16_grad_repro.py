"""A minimal reproduction, in plain PyTorch, of the inductor bug that ``enable_torch_compile`` works around.

A frozen bfloat16 block shaped like the SD VAE decoder's up-block: a resnet (GroupNorm, SiLU, conv, twice,
plus the skip connection), then nearest 2x upsampling and a convolution. Its gradient with respect to
the input should match eager mode. Found with torch 2.13.0 on the CPU: inductor returns an all-zero
gradient, while the "aot_eager" backend returns the right one.

    python examples/inductor_bf16_grad_repro.py [cpu|cuda]

Exit status 1 when the compiled gradient is wrong.
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = 16


class UpBlock(nn.Module):
    """resnet(x) = x + conv(silu(norm(conv(silu(norm(x)))))), then conv(upsample_nearest_2x(resnet(x)))."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(4, CHANNELS), nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(4, CHANNELS), nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        self.upsample_conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.upsample_conv(F.interpolate(x + h, scale_factor=2.0, mode="nearest"))


def input_gradient(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    y = block(x.to(torch.bfloat16)).float()
    return torch.autograd.grad((y**2).mean(), x)[0]


def main() -> int:
    device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    torch.manual_seed(0)
    block = UpBlock().to(device, torch.bfloat16).requires_grad_(False)
    x = torch.randn(1, CHANNELS, 8, 8, device=device)
    eager = input_gradient(block, x)
    compiled = input_gradient(torch.compile(block), x)
    cosine = F.cosine_similarity(compiled.flatten(), eager.flatten(), dim=0).item()
    print(
        f"torch {torch.__version__} on {device}: |eager grad| {eager.norm().item():.4g}, "
        f"|inductor grad| {compiled.norm().item():.4g}, cosine {cosine:.4f}"
    )
    return 0 if cosine > 0.99 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""A minimal reproduction, in plain PyTorch, of the inductor bug that ``enable_torch_compile`` works around.

A frozen bfloat16 block shaped like the SD VAE decoder's up-block: a resnet (GroupNorm, SiLU, conv, twice,
plus the skip connection), then nearest 2x upsampling and a convolution. Its gradient with respect to
the input should match eager mode. Found with torch 2.13.0 on the CPU: inductor returns an all-zero
gradient, while the "aot_eager" backend, or inductor with ``layout_optimization`` off, returns the right one.

The cause, traced in torch 2.13.0's inductor:
- the backward of the nearest upsampling is a scatter-add (``_unsafe_index_put``, accumulate) into a
  zero-filled float32 buffer; the cast of that buffer to bfloat16 reads the buffer as renamed by the
  mutation, which orders it after the scatter-add;
- with layout optimization (channels-last convolutions, always on for the CPU's mkldnn), the cast is fused
  with the channels-last copy for the next convolution's backward; to fuse their different loop ranges,
  the C++ backend calls ``SchedulerNode.recompute_size_and_body``;
- that method re-reads the node's dependencies from its loop body and re-applies the mutation renames
  only when the node also has a ``WeakDep`` or ``StarDep``. The cast has neither, so it now depends on the
  zero fill instead of the scatter-add, is scheduled before it, and passes zeros on: the whole gradient
  below the upsampling is zero;
- re-applying the renames unconditionally (as ``refresh_dependencies`` does) fixes it. Only the C++
  backend calls ``recompute_size_and_body``, so CUDA's Triton backend should not take this path;
  ``examples/gpu_checks.sh`` runs this script on CUDA to confirm it.

    python examples/development/inductor_bf16_grad_repro.py [cpu|cuda]

Prints the gradient of eager mode, of inductor's default and of inductor with ``layout_optimization``
off. Exit status 1 when inductor's default gradient is wrong.
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

    def cosine(gradient: torch.Tensor) -> float:
        return F.cosine_similarity(gradient.flatten(), eager.flatten(), dim=0).item()

    default = input_gradient(torch.compile(block), x)
    without_layout_optimization = input_gradient(torch.compile(block, options={"layout_optimization": False}), x)
    print(
        f"torch {torch.__version__} on {device}: |eager grad| {eager.norm().item():.4g}, "
        f"|inductor grad| {default.norm().item():.4g}, cosine {cosine(default):.4f}; "
        f"layout_optimization off: cosine {cosine(without_layout_optimization):.4f}"
    )
    return 0 if cosine(default) > 0.99 else 1


if __name__ == "__main__":
    raise SystemExit(main())

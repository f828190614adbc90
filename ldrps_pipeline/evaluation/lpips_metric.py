"""LPIPS (AlexNet, v0.1), the perceptual distance the paper reports, through whichever package is installed.

Neither package is a dependency of ldrps-pipeline (both need torchvision, which must match the installed torch):
:func:`load_lpips` uses ``lpips`` (Zhang et al.'s own package) when it is importable, else ``pyiqa``'s ``"lpips"``
metric (the same AlexNet v0.1 weights), else returns ``None`` and the benchmark leaves LPIPS out with a note. The
two packages take different conventions, which :class:`LPIPS` hides: ``lpips.LPIPS`` wants NCHW images in [-1, 1],
``pyiqa`` wants them in [0, 1]. Both download their network weights on first use.
"""

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

LPIPS_PACKAGES = ("lpips", "pyiqa")
"""The packages :func:`load_lpips` tries, in order."""

LPIPS_MISSING_NOTE = "LPIPS: left out (neither lpips nor pyiqa is installed: pip install lpips)."
"""The table's note when no LPIPS package is installed."""


@dataclass(frozen=True)
class LPIPS:
    """A loaded LPIPS metric: ``metric(x, y)`` is the distance of each image pair, lower is closer.

    Args:
        package: the package that computes it, with its version (``"lpips 0.1.4"``).
        distance: ``(x, y) -> (B,)`` on ``(B, 3, H, W)`` batches in [0, 1] on the metric's device.
        device: where the network runs.
    """

    package: str
    distance: Callable[[Tensor, Tensor], Tensor]
    device: torch.device

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """The LPIPS distance per image of two ``(B, 3, H, W)`` RGB batches in [0, 1], as float32 on the CPU."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise ValueError(
                f"LPIPS needs two RGB batches of one shape (B, 3, H, W), got {tuple(x.shape)}, {tuple(y.shape)}"
            )
        distance = self.distance(x.float().to(self.device), y.float().to(self.device))
        return distance.reshape(x.shape[0]).float().cpu()


def _version(package: str) -> str:
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return package


def load_lpips(device: torch.device | str = "cpu") -> LPIPS | None:
    """LPIPS (AlexNet) from ``lpips``, else from ``pyiqa``, on ``device``; ``None`` when neither is importable."""
    device = torch.device(device)
    try:
        import lpips
    except ImportError:
        pass
    else:
        network = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
        return LPIPS(_version("lpips"), lambda x, y: network(2 * x - 1, 2 * y - 1), device)
    try:
        import pyiqa
    except ImportError:
        return None
    metric = pyiqa.create_metric("lpips", device=device)
    return LPIPS(_version("pyiqa"), metric, device)

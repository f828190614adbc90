"""The training's device and precision (``demo_training.compute``)."""

import torch

from ldrps_pipeline.demo_training.compute import Compute


def test_explicit_precision_and_device_are_kept() -> None:
    fp32 = Compute.choose("cpu", "fp32")
    bf16 = Compute.choose("cpu", "bf16")
    assert fp32 == Compute(torch.device("cpu"), bf16=False) and fp32.precision == "fp32"
    assert bf16.bf16 and bf16.precision == "bf16 autocast"
    assert fp32.device_name().startswith("CPU (")


def test_autocast_computes_in_bf16_only_when_asked() -> None:
    x = torch.ones(2, 2)
    with Compute(torch.device("cpu"), bf16=True).autocast():
        assert (x @ x).dtype == torch.bfloat16
    with Compute(torch.device("cpu"), bf16=False).autocast():
        assert (x @ x).dtype == torch.float32


def test_auto_device_is_cuda_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert Compute.choose("auto", "fp32").device.type == expected

"""Test-wide settings: one CPU thread per process.

The tests use tiny models, which gain nothing from intra-op threads, and OpenMP threads that spin
while another process holds the cores (a training run, a second pytest) slow tiny ops down by
orders of magnitude. The README's command runs the suite on pytest-xdist's workers, one per core.
"""

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cores_per_process() -> int:
    """The cores a test may keep busy: all of them in a lone pytest, its share of them on one of pytest-xdist's
    workers (which set PYTEST_XDIST_WORKER_COUNT)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers)


@pytest.fixture
def fresh_dynamo():
    """dynamo's compiled code is cached per code object (shared by every UNet): start and leave with an empty cache."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()

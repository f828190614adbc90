"""Test-wide settings: one CPU thread per process.

The tests use tiny models, which gain nothing from intra-op threads, and OpenMP threads that spin
while another process holds the cores (a training run, a second pytest) slow tiny ops down by
orders of magnitude.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def fresh_dynamo():
    """dynamo's compiled code is cached per code object (shared by every UNet): start and leave with an empty cache."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()

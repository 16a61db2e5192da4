"""Optimizer tests run on the CPU with two threads, like CI."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    torch.set_num_threads(2)
    yield

"""Shared fixtures of the evaluation tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Small models and tiny tensors: a second intra-op thread only adds latency (badly so on a shared, loaded
    machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

import pytest
import torch


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, as the engine computes (the suite's conftest sets it
    once; a benchmark between others must not inherit a change)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Unit tests run on one torch thread: on a 2-core machine shared with other work, two
threads contend and a tiny step can take 50x longer. Results do not depend on it."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Fixtures several test modules share."""
import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Micro models gain nothing from a second torch thread, and on a busy machine two spin-waiting OpenMP
    threads make every forward ~100x slower; modules that run many micro forwards in-process ask for this
    (`pytestmark = pytest.mark.usefixtures("one_thread")`). Nothing that uses it checks a speed."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

import os
import sys

import pytest
import torch

# Tests share a 2-core machine; one intra-op thread avoids pathological OpenMP contention.
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))  # test helpers import each other


@pytest.fixture(scope="module")
def ray_session():
    """An embedded Ray cluster of the test module's own (``address="local"``: never one already
    running on the machine); reused when a session is already initialised."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()

import os
import sys

import torch

# Tests share a 2-core machine; one intra-op thread avoids pathological OpenMP contention.
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))  # test helpers import each other

"""Shared pytest fixtures: the vendored goldens of the official SemiVL code, and one-thread torch for tiny runs."""
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).parent/'golden'


@pytest.fixture(scope='session')
def golden():
    "Load a vendored golden file by stem: `golden('vlg_head_crop512')` -> dict of arrays"
    def load(stem: str) -> dict:
        with np.load(GOLDEN/f'{stem}.npz') as z:
            return {k: z[k] for k in z.files}
    return load


@pytest.fixture(scope='module')
def one_thread():
    "Tiny toy runs: one torch thread is faster than fighting over the CPU (and compared runs use the same count)"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

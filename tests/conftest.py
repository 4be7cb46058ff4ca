"""Shared pytest fixtures: the vendored goldens of the official SemiVL code."""
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent/'golden'


@pytest.fixture(scope='session')
def golden():
    "Load a vendored golden file by stem: `golden('vlg_head_crop512')` -> dict of arrays"
    def load(stem: str) -> dict:
        with np.load(GOLDEN/f'{stem}.npz') as z:
            return {k: z[k] for k in z.files}
    return load

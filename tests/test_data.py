"""Image decoding and input checks of ftdyn.data."""

from __future__ import annotations

import numpy as np
import pytest

from ftdyn import data as D
from ftdyn.errors import FtdynError


def test_check_seed_range_and_type():
    assert D.check_seed(0) == 0
    assert D.check_seed(np.int64(2**32 - 1)) == 2**32 - 1
    with pytest.raises(FtdynError, match=r"^--probe-seed: 4294967296 is out of range; .* 0 to 4294967295\.$"):
        D.check_seed(2**32, flag="--probe-seed")
    with pytest.raises(FtdynError, match=r"^--seed: -1 is out of range"):
        D.check_seed(-1)
    with pytest.raises(FtdynError, match=r"^--seed: 1\.5 is not a whole number"):
        D.check_seed(1.5)

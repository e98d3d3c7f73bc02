"""Comparing served answers across machines: ids and positions exactly, scores with a tolerance.

Float32 sums differ in the last bits between CPUs (an AMD EPYC gave 2.4e-7 where an Intel
Xeon gave 0 for a chunked vs a whole matmul), so scores are never compared exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kmr import contract

SCORE_RTOL = 1e-5
SCORE_ATOL = 1e-6


def assert_same_results(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], *,
                        rtol: float = SCORE_RTOL, atol: float = SCORE_ATOL) -> None:
    """Every output of ``want`` in ``got``: scores within tolerance, everything else equal."""
    for name, value in want.items():
        if name == contract.TOP_SCORES:
            np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)

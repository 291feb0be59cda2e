"""Fixtures and pytest hooks. The shared helpers live in the ``helpers`` package
(tests/helpers: numerics, dispatch probes, tiny models, training data); their names are
re-exported here for the tests that import them from conftest."""

from __future__ import annotations

import pytest
import torch
from helpers.dispatch import (  # noqa: F401 (re-exported)
    ATTENTION_OP,
    LargestTensor,
    OpCounter,
    count_op_calls,
)
from helpers.numerics import (  # noqa: F401 (re-exported)
    DEVICES,
    DTYPES,
    UNIT_ROUNDOFF,
    assert_matches,
    backend_params,
    rel_err,
    rel_norm,
    stable_seed,
    worst,
)


@pytest.fixture(scope="module")
def one_thread():
    """Conversion runs small float64 SVDs and tiny matmuls; on shared, busy cores torch's
    intra-op threads make them ~100x slower (spin-waiting), so a module that converts models
    runs single-threaded (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

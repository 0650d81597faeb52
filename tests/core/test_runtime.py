"""Thread limits reach both torch and numpy's BLAS, and the context restores them."""

from __future__ import annotations

import numpy as np  # noqa: F401  (loads the BLAS threadpoolctl inspects)
import torch
from threadpoolctl import threadpool_info

from gpr.core.runtime import limit_threads


def _blas_threads() -> list[int]:
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_limit_threads_sets_and_restores_torch_and_blas() -> None:
    torch_before, blas_before = torch.get_num_threads(), _blas_threads()
    assert blas_before, "numpy links no BLAS that threadpoolctl can see"
    with limit_threads(1):
        assert torch.get_num_threads() == 1
        assert _blas_threads() == [1] * len(blas_before)
    assert torch.get_num_threads() == torch_before
    assert _blas_threads() == blas_before


def test_limit_threads_none_changes_nothing() -> None:
    before = torch.get_num_threads(), _blas_threads()
    with limit_threads(None):
        assert (torch.get_num_threads(), _blas_threads()) == before

"""Runtime: the compute device, and CPU thread limits for torch and the BLAS numpy links.

numpy's OpenBLAS starts one worker thread per core, and its idle workers spin (sched_yield)
between calls. Two processes on two cores then lose most of their time to each other's spinning
workers: on 2026-12-05 a small-preset MTP step took 8.5 s with two runs side by side and 0.3 s
once BLAS was held to one thread. So every place that sets torch's threads sets BLAS's too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from threadpoolctl import threadpool_limits

from gpr.core.errors import GprInputError


def set_threads(n: int | None) -> None:
    """Use n threads for torch's intra-op pool and for BLAS from now on (None: leave both)."""
    if n is not None:
        torch.set_num_threads(n)
        threadpool_limits(n)


@contextlib.contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """Run a block with n torch and BLAS threads, restoring the previous settings after."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(old)


def torch_device(name: str) -> torch.device:
    """`auto`: CUDA when available, else CPU; otherwise the named torch device (an unknown name,
    or CUDA where there is none, is a GprInputError)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise GprInputError(
            f"unknown device {name!r} (cpu | cuda | auto)", field="device"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GprInputError("no CUDA device on this machine", field="device")
    return dev

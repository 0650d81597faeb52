"""Data-parallel training and gradient accumulation: 2 CPU processes (torchrun, gloo), or 2
accumulated micro-batches, train like 1 process with the doubled batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import ROOT

COMMON = ["--set", "model.dropout=0", "--set", "train.epochs=1", "--set", "train.patience=1"]


def _train(world: Path, sids: Path, out: Path, batch: int, procs: int, accumulate: int = 1) -> None:
    args = ["train", "--model", "hstu", "--data", str(world), "--sids", str(sids)]
    args += ["--preset", "tiny", *COMMON, "--set", f"train.batch_size={batch}", "--out", str(out)]
    args += ["--set", f"train.accumulate={accumulate}"]
    if procs == 1:
        cmd = [sys.executable, "-m", "gpr.cli", *args]
    else:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd = [*torchrun, "--nproc_per_node", str(procs), "-m", "gpr.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.parametrize(("procs", "accumulate"), [(2, 1), (1, 2)])
def test_two_processes_or_two_micro_batches_equal_one_with_the_doubled_batch(
    procs: int, accumulate: int, tiny_world: Path, tiny_sids: Path, tmp_path: Path
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _train(tiny_world, tiny_sids, one, 16, 1)
    _train(tiny_world, tiny_sids, two, 8, procs, accumulate)
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    # The same steps; only the order of float sums differs. Adam turns the float noise of a
    # gradient that is 0 in exact arithmetic (an attention key bias) into steps of up to lr, so
    # the bound is half a step of lr = 1e-3; every other tensor agrees far closer.
    diff = {k: float((a[k] - b[k]).abs().max()) for k in a}
    assert max(diff.values()) < 5e-4, max(diff.items(), key=lambda kv: kv[1])
    assert sorted(diff.values())[len(diff) // 2] < 1e-6  # the median tensor
    info, ref = (json.loads((r / "run.json").read_text()) for r in (two, one))
    assert info["processes"] == procs and info["best"] == ref["best"]
    assert not list(tmp_path.glob(".two*"))  # rank 1 wrote nothing beside the run

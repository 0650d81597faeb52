"""Exact resume: MTP training killed with SIGKILL and resumed ends bit-identical to a run that was
never interrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, run_cli

SETTINGS = ["--preset", "tiny", "--set", "train.epochs=3", "--set", "train.checkpoint_every=1"]


def _train_args(world: Path, sids: Path, out: Path) -> list[str]:
    return ["train", "--model", "gpr", "--data", str(world), "--sids", str(sids), *SETTINGS,
            "--out", str(out)]  # fmt: skip


def _losses(run: Path) -> list[float]:
    rows = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(r)["loss"] for r in rows]


def test_sigkill_then_resume_is_bit_identical(
    tiny_world: Path, tiny_sids: Path, tmp_path: Path
) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    p = run_cli(*_train_args(tiny_world, tiny_sids, whole))
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "whole.ckpt").exists()  # removed once the run is written
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpr.cli", *_train_args(tiny_world, tiny_sids, cut)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = tmp_path / "cut.ckpt" / "state.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists():
            try:
                meta = json.loads(state.read_text())
            except (json.JSONDecodeError, OSError):  # being replaced
                meta = {}
            if meta.get("epoch", 0) >= 1 and meta.get("step", 0) >= 1:  # mid-run
                break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not cut.exists() and (tmp_path / "cut.ckpt").is_dir()
    p = run_cli("train", "--resume", str(cut))
    assert p.returncode == 0, p.stderr
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(whole) == _losses(cut)
    assert not (tmp_path / "cut.ckpt").exists()
    assert not list(tmp_path.glob(".cut*"))  # no temp left behind


def test_resume_without_a_checkpoint_or_with_other_options(tmp_path: Path) -> None:
    p = run_cli("train", "--resume", str(tmp_path / "nothing"))
    assert p.returncode == 2 and "no checkpoint to resume" in p.stderr
    p = run_cli("train", "--resume", str(tmp_path / "nothing"), "--preset", "tiny")
    assert p.returncode == 2 and "takes no other option" in p.stderr


def test_a_damaged_checkpoint_is_one_line(tmp_path: Path) -> None:
    ck = tmp_path / "r.ckpt"
    ck.mkdir()
    full = {"format": 1, "command": {"stage": "mtp", "config": {"train": {"epochs": "x"}}}}
    full |= {k: 0 for k in ("epoch", "step", "losses", "log", "best", "bad_epochs")}
    full |= {k: {} for k in ("scheduler", "numpy_rng", "param_groups", "opt_scalars")}
    for meta, needle in (
        ({"format": 1}, "field 'command': the checkpoint is incomplete"),
        ({"format": 9}, "checkpoint format 9"),
        ({**full, "command": {"stage": "dpo"}}, "not an MTP training command"),
        (full, "config.train.epochs"),
    ):
        (ck / "state.json").write_text(json.dumps(meta))
        p = run_cli("train", "--resume", str(tmp_path / "r"))
        assert p.returncode == 2 and needle in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "r").exists()

"""Hostile-but-honest input through the `gpr` command, as a user sees it: every probe exits with
the documented code and one `gpr: ...` line, never a traceback, and writes or deletes nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli


def _snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*")} if root.exists() else {}


def _one_line(p: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("gpr: ") and needle in lines[-1], p.stderr


@pytest.mark.parametrize("args", [[], ["world"], ["data"], ["data", "import"], ["run"]])
def test_no_arguments_prints_help(args: list[str]) -> None:
    p = run_cli(*args)
    assert p.returncode in (0, 2) and "Usage" in p.stdout + p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["bogus"], "No such command"),
        (["train"], "--out RUN is required"),
        (["eval", "--run", "x", "--limit", "abc"], "--limit"),
        (["eval", "--run", "x", "--limit", "0"], "--limit"),
        (["eval", "--run", "x", "--beam", "0"], "--beam"),
        (
            ["simulate", "--policy", "logging", "--data", "x", "--max-requests", "-3"],
            "--max-requests",
        ),
        (["eval", "--run", "x", "--threads", "-1"], "--threads"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], needle: str) -> None:
    _one_line(run_cli(*args), 2, needle)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.epochs=true", "epochs"),
        ("model.heads=3", "must divide d_model"),
        ("world.margin_low=0.9", "margin_low"),
        ("world.min_lifespan_days=500", "min_lifespan_days"),
        ("world.tier_probs=[0.5,0.6,-0.1]", "tier_probs"),
        ("world.test_days=3", "train day"),
        ("runtime.threads=0", "runtime.threads"),
        ("model.hte_features=[session]", "needs 'side'"),
        ("cascade.intent=true", "cascade.intent"),
    ],
)
def test_bad_settings_are_refused_before_any_output(
    override: str, needle: str, tmp_path: Path
) -> None:
    p = run_cli(
        "world", "generate", "--preset", "tiny", "--set", override, "--out", str(tmp_path / "w")
    )
    _one_line(p, 2, needle)
    assert not any(tmp_path.iterdir())


def test_an_empty_config_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("")
    p = run_cli(
        "world", "generate", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "w")
    )
    _one_line(p, 2, "empty")


def test_an_existing_output_is_kept_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "x"
    out.mkdir()
    (out / "t.txt").write_text("keep")
    _one_line(run_cli("world", "generate", "--preset", "tiny", "--out", str(out)), 2, "--overwrite")
    assert (out / "t.txt").read_text() == "keep"


def test_an_input_is_never_the_output(tiny_world: Path, tmp_path: Path) -> None:
    before = _snapshot(tiny_world)
    for out in (tiny_world, tiny_world / "sids"):
        p = run_cli("tokenize", "--data", str(tiny_world), "--out", str(out), "--overwrite")
        _one_line(p, 2, "input")
    assert _snapshot(tiny_world) == before


def test_eval_out_that_is_a_directory_fails_before_the_work(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    p = run_cli("eval", "--run", str(runs[0]), "--out", str(tmp_path))
    _one_line(p, 2, "is a directory")


@pytest.mark.parametrize("damage", ["model_config", "not_json", "cascade_as_init"])
def test_corrupt_or_foreign_runs_exit_2(
    damage: str, runs: tuple[Path, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    info = json.loads((run / "run.json").read_text())
    if damage == "model_config":
        (run / "run.json").write_text(json.dumps({**info, "model_config": {"d_model": "big"}}))
        p, needle = run_cli("eval", "--run", str(run)), "model_config.d_model"
    elif damage == "not_json":
        (run / "run.json").write_text("{")
        p, needle = run_cli("eval", "--run", str(run)), "run.json"
    else:
        args = ["--stage", "vaft", "--init", str(runs[1]), "--simulator", str(runs[1])]
        p, needle = run_cli("train", "--preset", "tiny", *args, "--out", str(tmp_path / "v")), "gpr"
    _one_line(p, 2, needle)
    assert not (tmp_path / "v").exists()


def test_temp_dirs_of_dead_processes_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".w.tmp-999999999-abc"  # no such pid
    stale.mkdir()
    (stale / "model.safetensors").write_text("half")
    live = tmp_path / f".w.tmp-{os.getpid()}-abc"  # this process is alive: kept
    live.mkdir()
    p = run_cli("world", "generate", "--preset", "tiny", "--out", str(tmp_path / "w"))
    assert p.returncode == 0, p.stderr
    assert not stale.exists() and live.exists() and (tmp_path / "w" / "manifest.json").exists()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_stop_cleanly(sig: int, code: int, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "gpr.cli", "world", "generate", "--preset", "small"]
    p = subprocess.Popen(
        [*cmd, "--out", str(tmp_path / "w")], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".w.tmp-*")):
        time.sleep(0.2)  # wait until it is writing
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("gpr: ")
    assert list(tmp_path.iterdir()) == []  # no output, no temp dir


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("manifest_no_hash", "content_hash"),
        ("manifest_no_split", "'split'"),
        ("manifest_no_train_days", "split.train_days"),
        ("truncated_events", "events.parquet"),
        ("truncated_truth_latents", "latents.safetensors"),
        ("truncated_truth_requests", "requests.parquet"),
    ],
)
def test_corrupt_datasets_exit_2(
    damage: str, needle: str, tiny_world: Path, tmp_path: Path
) -> None:
    data = tmp_path / "w"
    shutil.copytree(tiny_world, data)
    manifest = json.loads((data / "manifest.json").read_text())
    if damage == "manifest_no_hash":
        del manifest["content_hash"]
    elif damage == "manifest_no_split":
        del manifest["split"]
    elif damage == "manifest_no_train_days":
        del manifest["split"]["train_days"]
    elif damage == "truncated_events":
        _truncate(data / "events.parquet")
    else:
        _truncate(data / "truth" / needle)
    (data / "manifest.json").write_text(json.dumps(manifest))
    before = _snapshot(data)
    p = run_cli(
        "simulate", "--policy", "logging", "--data", str(data), "--out", str(tmp_path / "s")
    )
    _one_line(p, 2, needle)
    if damage.startswith("manifest"):  # the tokenizer reads the manifest too
        p = run_cli("tokenize", "--data", str(data), "--out", str(tmp_path / "t"))
        _one_line(p, 2, needle)
    assert _snapshot(data) == before and not (tmp_path / "s").exists()
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("out", ["/proc/gpr-nope/sim.json", "/sys/sim.json"])
def test_an_unwritable_out_fails_before_the_work(out: str, tiny_world: Path) -> None:
    p = run_cli("simulate", "--policy", "logging", "--data", str(tiny_world), "--out", out)
    _one_line(p, 2, "cannot write here")


@pytest.mark.parametrize(("device", "needle"), [("gpu", "unknown device"), ("cuda:0x", "device")])
def test_a_bad_device_is_one_line(device: str, needle: str, runs: tuple[Path, Path]) -> None:
    _one_line(run_cli("serve", "--run", str(runs[0]), "--device", device), 2, needle)

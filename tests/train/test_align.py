"""Short DPO / HEPO runs that must improve, reference runs, and `gpr train --stage`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gpr.core.config import load_config
from gpr.core.errors import GprInputError
from gpr.market.ads import eligible_mask
from gpr.market.journeys import LogData
from gpr.market.policy import RequestBatch
from gpr.model.registry import load_run
from gpr.policy.builtins import load_policy
from gpr.policy.rollout import (
    level_dists,
    level_kl,
    sample,
)
from gpr.train.align import Aligner
from gpr.train.dpo import log_value
from tests.conftest import run_cli

F64 = torch.float64


# --- short alignment runs ------------------------------------------------------------------------
def _mean_reward(al: Aligner, req: RequestBatch, k: int = 16) -> float:
    """Mean simulator value of K fresh samples per request (a fixed generator)."""
    req, b, counts = al._prepare(req)
    roll = sample(al.model, b, al.trie, counts, k, 1.0, torch.Generator().manual_seed(0))
    return float(al.rewards(req, roll).mean())


def _aligner(runs: tuple[Path, Path], stage: str) -> Aligner:
    cfg = load_config("tiny", overrides=["align.lr=0.003", "align.kl_weight=0"])
    torch.manual_seed(cfg.seed)
    return Aligner(runs[0], runs[1], cfg, stage)


def test_hepo_step_with_log_reward_and_centred_leaf(runs: tuple[Path, Path]) -> None:
    """reward=log_value with the centred leaf: a HEPO step's leaf advantages are centred."""
    cfg = load_config("tiny", overrides=["align.reward=log_value", "align.leaf_advantage=center"])
    al = Aligner(runs[0], runs[1], cfg, "hepo")
    row = al.step()
    assert abs(row[f"adv_l{al.trie.depth - 1}_mean"]) < 1e-5  # centred within each request
    assert math.isfinite(row["policy_loss"])


def test_candidate_pool_samples_only_the_reference_beam(runs: tuple[Path, Path]) -> None:
    """align.candidate_pool=N: every sampled ad is one of the reference's top-N beam ads."""
    al = _aligner(runs, "hepo")
    req = al.requests(np.sort(np.random.default_rng(2).choice(al.train_pos, 8, replace=False)))
    req, b, counts = al._prepare(req, pool=3)
    leaves = counts[-1]  # eligible leaves per request: at most 3, at least 1
    assert ((leaves.sum(1) >= 1) & (leaves.sum(1) <= 3)).all()
    with torch.no_grad():
        beam, _ = al.ref.generate(b, al.trie, 3, al.prep.trie_eligible(req))
    roll = sample(al.model, b, al.trie, counts, 12, gen=torch.Generator().manual_seed(0))
    for r, item in zip(roll.req.tolist(), roll.item.tolist(), strict=True):
        assert item in beam[r].tolist()


def _perturbed_copy(run: Path, out: Path, seed: int = 0) -> Path:
    """A copy of `run` whose weights are nudged by noise: another policy on the same data."""
    out.mkdir()
    (out / "run.json").write_text((run / "run.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    w = load_file(str(run / "model.safetensors"))
    params = {k for k, _ in load_run(run)[0].named_parameters()}  # not the buffers
    noisy = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if k in params else v
             for k, v in w.items()}  # fmt: skip
    save_file(noisy, str(out / "model.safetensors"))
    return out


def test_reference_run_and_the_regularised_objective(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """--reference: the KL anchor is that run, not the init. The valid objective is E[log v]
    minus kl_weight × the level KL to it, on the same samples (they come from the policy)."""
    ref = _perturbed_copy(runs[0], tmp_path / "ref")
    over = ["align.reward=log_value", "align.kl_weight=0.5", "align.select=objective"]
    cfg = load_config("tiny", overrides=[*over, "align.eval_requests=12"])
    own = Aligner(runs[0], runs[1], cfg, "hepo")
    other = Aligner(runs[0], runs[1], cfg, "hepo", reference=ref)
    w_ref = load_file(str(ref / "model.safetensors"))
    key = next(k for k in w_ref if k.endswith("weight"))
    assert torch.equal(other.ref.state_dict()[key], w_ref[key])
    assert torch.equal(own.ref.state_dict()[key], own.model.state_dict()[key])
    assert not torch.equal(other.ref.state_dict()[key], other.model.state_dict()[key])
    # by hand, on the samples both draw (the same policy, the same validation generator)
    req, b, counts = other._prepare(other.valid)
    roll = sample(other.model, b, other.trie, counts, cfg.align.candidates, 1.0,
                  torch.Generator().manual_seed(cfg.seed + 1))  # fmt: skip
    logv = log_value(other.rewards(req, roll)).mean()
    with torch.no_grad():
        lps = level_dists(other.model, b, other.trie, counts, roll)[0]
        kl = level_kl(lps, level_dists(other.ref, b, other.trie, counts, roll)[0]).sum(1).mean()
    assert kl > 1e-3
    assert own.validate_objective() == pytest.approx(float(logv), rel=1e-5)
    assert other.validate_objective() == pytest.approx(float(logv) - 0.5 * float(kl), rel=1e-5)


def test_reference_must_share_the_init_data_and_sids(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    ref = _perturbed_copy(runs[0], tmp_path / "ref")
    info = json.loads((ref / "run.json").read_text())
    (ref / "run.json").write_text(json.dumps({**info, "sids": "elsewhere"}))
    cfg = load_config("tiny")
    with pytest.raises(GprInputError, match="sids differs") as e:
        Aligner(runs[0], runs[1], cfg, "hepo", reference=ref)
    assert e.value.field == "sids"
    bad = load_config("tiny", overrides=["align.select=objective"])  # reward=value
    with pytest.raises(GprInputError, match="log reward") as e:
        Aligner(runs[0], runs[1], bad, "hepo")
    assert e.value.field == "align.select"


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def test_hepo_raises_the_simulator_reward(runs: tuple[Path, Path]) -> None:
    al = _aligner(runs, "hepo")
    req = al.requests(np.sort(np.random.default_rng(1).choice(al.train_pos, 64, replace=False)))
    before = _mean_reward(al, req)
    rows = [al.step() for _ in range(20)]
    after = _mean_reward(al, req)
    assert after > 1.3 * before  # about 2x on the tiny world
    assert _mean(rows[-5:], "reward") > 1.2 * _mean(rows[:5], "reward")
    # leaf advantages are z-scores within each request: mean 0 at every step
    assert all(abs(r[f"adv_l{al.trie.depth - 1}_mean"]) < 1e-5 for r in rows)
    assert all(r["kl"] == 0.0 and r["process_reward"] >= 0 for r in rows)


def test_dpo_learns_the_preferences(runs: tuple[Path, Path]) -> None:
    al = _aligner(runs, "dpo")
    req = al.requests(np.sort(np.random.default_rng(1).choice(al.train_pos, 64, replace=False)))
    before = _mean_reward(al, req)
    rows = [al.step() for _ in range(30)]
    after = _mean_reward(al, req)
    assert all(r["pairs"] > 0 for r in rows)
    # step 1: the policy is the reference, every margin is 0 (up to float noise: the frozen
    # reference runs torch's no-grad transformer fast path), so the loss is log 2
    assert rows[0]["loss"] == pytest.approx(math.log(2.0), abs=1e-6)
    assert _mean(rows[-5:], "loss") < _mean(rows[:5], "loss") - 0.02  # 0.69 -> 0.58 here
    assert after > 1.2 * before  # about 2x here (>= 1.4x over eight seeds)


# --- CLI ---------------------------------------------------------------------------------------
def _train(*args: str) -> Any:
    return run_cli("train", "--preset", "tiny", "--set", "runtime.threads=1", *args)


def _one_line_error(r: Any, needle: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_cli_stage_errors(runs: tuple[Path, Path], tmp_path: Path) -> None:
    run, casc = (str(p) for p in runs)
    out = tmp_path / "out"
    _one_line_error(_train("--stage", "hepo", "--simulator", casc, "--out", str(out)), "'init'")
    r = _train("--stage", "dpo", "--arr", "--init", run, "--simulator", casc, "--out", str(out))
    _one_line_error(r, "'arr'")
    r = _train("--stage", "vaft", "--reference", run, "--init", run, "--simulator", casc,
               "--out", str(out))  # fmt: skip
    _one_line_error(r, "'reference'")
    r = _train("--stage", "bogus", "--init", run, "--simulator", casc, "--out", str(out))
    _one_line_error(r, "'stage'")
    r = _train(
        "--stage", "hepo", "--init", run, "--simulator", casc, "--out", str(out),
        "--set", "align.process_alpha=[0.1]",
    )  # fmt: skip
    _one_line_error(r, "'align.process_alpha'")
    assert not out.exists()


def test_cli_vaft_then_hepo_with_arr(
    runs: tuple[Path, Path], tiny_world: Path, tmp_path: Path
) -> None:
    run, casc = runs
    vaft, hepo = tmp_path / "vaft", tmp_path / "hepo"
    r = _train(
        "--stage", "vaft", "--init", str(run), "--simulator", str(casc), "--out", str(vaft),
        "--set", "train.epochs=1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    info = json.loads((vaft / "run.json").read_text())
    assert (info["stage"], info["init"], info["simulator"]) == ("vaft", str(run), str(casc))
    before, after = (
        load_file(str(run / "model.safetensors")),
        load_file(str(vaft / "model.safetensors")),
    )
    assert before.keys() == after.keys() and any(
        not torch.equal(before[k], after[k]) for k in before
    )
    r = _train(
        "--stage", "hepo", "--arr", "--init", str(vaft), "--simulator", str(casc),
        "--out", str(hepo), "--set", "align.steps=2", "--set", "align.eval_every=1",
        "--reference", str(run), "--set", "align.reward=log_value",
        "--set", "align.select=objective",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    info = json.loads((hepo / "run.json").read_text())
    assert (info["stage"], info["init"], info["steps"]) == ("hepo+arr", str(vaft), 2)
    assert info["reference"] == str(run) and info["best"]["step"] in (0, 1, 2)
    rows = [json.loads(x) for x in (hepo / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [0, 1, 2]
    assert all("valid_value" in x and "valid_objective" in x for x in rows)
    kept = rows[info["best"]["step"]]["valid_objective"]
    assert kept == max(x["valid_objective"] for x in rows) == info["best"]["valid_objective"]
    logs = LogData.load(tiny_world)
    j = logs.journeys
    pos = j.requests("test")[:6]
    elig = eligible_mask(logs.ads, logs.users, j.user[pos], j.day[pos])
    batch = RequestBatch.at(pos, j, logs.ads, logs.users, elig)
    for out in (vaft, hepo):
        policy = load_policy(out, tiny_world)
        assert policy.name == f"gpr:{out.name}"
        top = policy.rank(batch).ads[:, 0]
        shown = top >= 0
        assert shown.sum() == elig.any(1).sum()
        assert elig[np.nonzero(shown)[0], logs.ads.index_of(top[shown])].all()

"""A trained generative run plays the true-world replay: only eligible ads, every request served."""

from __future__ import annotations

from pathlib import Path

from gpr.config import load_config
from gpr.eval.simulate import simulate_spec
from gpr.train.mtp import train


def test_gpr_run_is_a_policy(tiny_world: Path, tiny_sids: Path, tmp_path: Path) -> None:
    cfg = load_config("tiny", overrides=["train.epochs=1"])
    train(tiny_world, tiny_sids, cfg, tmp_path / "run", "gpr", progress=False)
    res = simulate_spec(tmp_path / "run", tiny_world, "test", max_requests=300)
    assert res["policy"].startswith("gpr:")
    assert res["ineligible_ranked"] == 0 and res["max_overspend_impressions"] <= 1
    assert res["n_shown"] == res["requests_with_eligible"] and res["rpm"] > 0
    oracle = simulate_spec("oracle", tiny_world, "test", max_requests=300)
    assert oracle["rpm"] >= res["rpm"]

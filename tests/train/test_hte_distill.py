"""HTE distilled from the simulator (`gpr train --stage hte`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gpr.core.config import load_config
from gpr.core.errors import GprInputError
from gpr.eval.simulate import simulate_spec
from gpr.model.gpr import GPRModel
from gpr.model.hte import SESSION_FEATURES, SIDE_FEATURES
from gpr.model.registry import load_run
from gpr.train.hte_distill import distill_hte, pair_agreement

F64 = torch.float64


def test_pair_agreement_by_hand() -> None:
    pred = torch.tensor([[1.0, 2.0, 3.0], [0.0, 5.0, 1.0]])
    target = torch.tensor([[1.0, 3.0, 2.0], [4.0, 4.0, 9.0]])
    ok = torch.tensor([[True, True, True], [True, True, False]])
    # row 0: pairs (0,1) agree, (0,2) agree, (1,2) disagree; row 1: (0,1) is a tie, 2 is masked;
    # each unordered pair is counted twice (i, j) and (j, i), so the share is 2 / 3
    assert pair_agreement(pred, target, ok) == pytest.approx(2 / 3)


def test_hte_distillation_fits_the_simulator(runs: tuple[Path, Path], tmp_path: Path) -> None:
    init, casc = runs
    cfg = load_config(
        "tiny", overrides=["align.hte_requests=96", "align.hte_epochs=4", "align.eval_requests=48"]
    )
    info = distill_hte(init, casc, cfg, tmp_path / "hte", progress=False)
    assert info["stage"] == "hte" and info["train_requests"] > 0
    rows = [json.loads(x) for x in (tmp_path / "hte" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and rows[-1]["loss"] < rows[1]["loss"] + 1e-9
    assert info["best"]["agreement"] >= rows[0]["valid_agreement"]
    before = load_file(str(init / "model.safetensors"))
    after = load_file(str(tmp_path / "hte" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if info["best"]["epoch"] > 0:
        assert changed and all(k.startswith(("hte.ctr.", "hte.cvr.")) for k in changed)
    else:
        assert not changed
    model, _, _ = load_run(tmp_path / "hte")  # loads as an ordinary run
    assert isinstance(model, GPRModel)


@pytest.mark.parametrize("session", [False, True])
def test_hte_distillation_with_side_features(
    runs: tuple[Path, Path], tiny_world: Path, tmp_path: Path, session: bool
) -> None:
    init, casc = runs
    cfg = load_config(
        "tiny",
        overrides=[
            "align.hte_requests=96",
            "align.hte_epochs=4",
            "align.eval_requests=48",
            "model.hte_features=[side, session]" if session else "model.hte_features=[side]",
        ],
    )
    info = distill_hte(init, casc, cfg, tmp_path / "hte", progress=False)
    want = ["side", "session"] if session else ["side"]
    assert info["model_config"]["hte_features"] == info["config"]["model"]["hte_features"] == want
    after = load_file(str(tmp_path / "hte" / "model.safetensors"))
    width = len(SIDE_FEATURES) + len(SESSION_FEATURES) * session
    assert after["hte.side_cvr.weight"].shape == (1, width)
    if info["best"]["epoch"] > 0:  # the wide part moved off its zero start
        assert after["hte.side_cvr.weight"].abs().sum() > 0
    model, _, _ = load_run(tmp_path / "hte")
    assert isinstance(model, GPRModel) and model.hte is not None and model.hte.side == width
    assert not load_run(init)[0].cfg.hte_side  # the init run is untouched
    # it serves: GPR ranks its union with the side-feature HTE (the replay's budgets kept)
    over = ["serve.score.log_hte_value=2"]
    res = simulate_spec(tmp_path / "hte", tiny_world, "test", max_requests=200, overrides=over)
    assert (
        res["policy"].endswith("+log_hte_value2")
        and res["ineligible_ranked"] == 0
        and res["rpm"] > 0
    )


def test_hte_session_needs_the_side_part() -> None:
    for over in ("model.hte_features=[session]", "model.hte_session=true"):  # the earlier name too
        with pytest.raises(GprInputError, match="'session' needs 'side'") as e:
            load_config("tiny", overrides=[over])
        assert e.value.field == "model"

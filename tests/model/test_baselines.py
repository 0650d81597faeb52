"""SASRec and TIGER baselines: learn, generate legal/eligible items, no leak, train end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpr.core.config import load_config
from gpr.eval.retrieval import evaluate_run
from gpr.model.baselines import TIGER, SASRec
from gpr.model.baselines.tiger import grid_slots
from gpr.model.journey import Batch, E, I, O, collate, make_windows, positions_for_split
from gpr.model.prepare import Prepared, prepare
from gpr.model.registry import MODELS, build_model, load_run, model_config_for
from gpr.train.mtp import train
from tests.conftest import overfit

NAMES = ["sasrec", "tiger"]


@pytest.fixture(scope="module")
def prep(tiny_world: Path, tiny_sids: Path) -> Prepared:
    cfg = load_config("tiny")
    return prepare(tiny_world, tiny_sids, model_config_for("tiger", cfg.model), 16)


def _batch(prep: Prepared, n: int = 6, max_len: int = 48) -> Batch:
    pos = positions_for_split(prep.journeys, prep.pred_mask, "train")
    wins = make_windows(prep.journeys, max_len, pos)[:n]
    return collate(prep.journeys, wins, prep.sids, prep.targets, prep.pred_mask, (0,), max_len)


def _model(prep: Prepared, name: str) -> SASRec | TIGER:
    torch.manual_seed(0)
    mcfg = model_config_for(name, load_config("tiny").model).model_copy(update={"dropout": 0.0})
    model = build_model(prep, mcfg, name)
    assert isinstance(model, SASRec if name == "sasrec" else TIGER)
    return model


def test_registered_and_item_ids_collated(prep: Prepared) -> None:
    assert {"tiger", "sasrec"} <= set(MODELS)
    assert model_config_for("sasrec", load_config("tiny").model).mtp_heads == 1
    b = _batch(prep)
    is_item = (b.ttype == O) | (b.ttype == I)
    assert ((b.item >= 0) == is_item).all()
    assert (b.codes[is_item] == torch.from_numpy(prep.sids.codes)[b.item[is_item]]).all()
    slot, g = grid_slots(torch.tensor([2, 0, 2, 2, 0]), 4)
    assert slot.tolist() == [0, 0, 1, 2, 1] and g == 3


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_when_overfitting(prep: Prepared, name: str) -> None:
    model = _model(prep, name)
    b = _batch(prep)
    losses = overfit(model, b, prep.trie)
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_generation_is_valid_unique_and_eligible(prep: Prepared, name: str) -> None:
    model = _model(prep, name).eval()
    b = _batch(prep, n=4)
    items, scores = model.generate(b, prep.trie, beam=20)
    assert items.shape == (len(b.pred_b), 20)
    assert set(items[items >= 0].tolist()) <= set(prep.trie.items.tolist())
    assert (items >= 0).all()  # 400 ads, beam 20: every slot filled
    assert all(len(set(r.tolist())) == len(r) for r in items)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    gen = torch.Generator().manual_seed(0)
    elig = torch.rand(len(b.pred_b), len(prep.trie.items), generator=gen) < 0.04
    items, _ = model.generate(b, prep.trie, beam=20, eligible=elig)
    for r in range(len(b.pred_b)):
        allowed = set(prep.trie.items[elig[r]].tolist())
        out = items[r][items[r] >= 0].tolist()
        assert set(out) <= allowed and len(out) == len(set(out)) == min(20, len(allowed))


def _outputs(model: SASRec | TIGER, b: Batch, prep: Prepared) -> torch.Tensor:
    """Per prediction: SASRec's item scores, TIGER's teacher-forced logits of every level."""
    if isinstance(model, SASRec):
        return model.scores(b, prep.trie)
    z = b.target_codes[:, 0, : model.levels].clamp(min=0)
    return torch.cat(model.level_logits(b, z), dim=1)


@pytest.mark.parametrize("name", NAMES)
def test_no_future_token_changes_a_prediction(prep: Prepared, name: str) -> None:
    model = _model(prep, name).eval()
    b = _batch(prep, n=3)
    base = _outputs(model, b, prep)
    gen = torch.Generator().manual_seed(1)
    picks = np.linspace(0, len(b.pred_b) - 1, 6).round().astype(int)
    for kind in (O, E, I, None):  # perturb one token type at a time, then everything
        for p in sorted(set(picks.tolist())):
            row, t = int(b.pred_b[p]), int(b.pred_t[p])
            sel = torch.zeros_like(b.ttype, dtype=torch.bool)
            sel[row, t + 1 :] = True
            sel &= (b.ttype >= 0) & ((b.ttype == kind) if kind is not None else True)
            if not sel.any():
                continue
            codes, field, action = b.codes.clone(), b.field.clone(), b.action.clone()
            item, ttype = b.item.clone(), b.ttype.clone()
            codes[sel] = torch.randint(0, 16, codes[sel].shape, generator=gen)
            field[sel] = torch.randint(0, 3, field[sel].shape, generator=gen)
            action[sel] = (action[sel] + 1) % 3
            item[sel] = torch.randint(0, len(prep.sids.codes), item[sel].shape, generator=gen)
            if kind is None:
                ttype[sel] = torch.where(ttype[sel] == O, E, O)
            new = _outputs(
                model,
                Batch(
                    **{
                        **b.__dict__,
                        "codes": codes,
                        "field": field,
                        "action": action,
                        "item": item,
                        "ttype": ttype,
                    }
                ),
                prep,
            )
            torch.testing.assert_close(new[p], base[p], rtol=1e-5, atol=1e-5)
            later = [q for q in range(len(b.pred_b)) if int(b.pred_b[q]) == row and q > p]
            if later and kind is None:  # the perturbation is not vacuous
                assert not torch.allclose(new[later[-1]], base[later[-1]])


@pytest.mark.parametrize("name", NAMES)
def test_train_one_epoch_and_reload(
    tiny_world: Path, tiny_sids: Path, tmp_path: Path, name: str
) -> None:
    cfg = load_config("tiny", overrides=["train.epochs=1", "train.device=cpu", "runtime.threads=1"])
    out = tmp_path / name
    summary = train(tiny_world, tiny_sids, cfg, out, model_name=name, progress=False)
    assert summary["model"] == name and summary["epochs_run"] == 1
    assert (out / "model.safetensors").exists()
    model, _, _ = load_run(out)
    assert type(model).__name__ == ("SASRec" if name == "sasrec" else "TIGER")
    res = evaluate_run(out, "test", limit=16, device="cpu")
    assert res["model"] == name and res["invalid_rate"] == 0.0 and res["n_predictions"] > 0
    assert 0.0 <= res["recall@10"] <= 1.0


def test_time_budget_stops_after_one_epoch_with_a_checkpoint(
    tiny_world: Path, tiny_sids: Path, tmp_path: Path
) -> None:
    # eval_every=5 would not validate epoch 0: the budget forces it, so a checkpoint exists
    cfg = load_config(
        "tiny",
        overrides=[
            "train.epochs=5",
            "train.eval_every=5",
            "train.max_seconds=0.001",
            "train.device=cpu",
            "runtime.threads=1",
        ],
    )
    summary = train(
        tiny_world, tiny_sids, cfg, tmp_path / "run", model_name="sasrec", progress=False
    )
    assert summary["epochs_run"] == 1 and summary["stopped_by"] == "max_seconds"
    assert summary["best"]["epoch"] == 0 and (tmp_path / "run" / "model.safetensors").exists()
    full = load_config("tiny", overrides=["train.epochs=1", "train.device=cpu"])
    assert train(tiny_world, tiny_sids, full, tmp_path / "r1", "sasrec", False)["stopped_by"] == (
        "epochs"
    )

from __future__ import annotations

from pathlib import Path

import pytest

from gpr.core.config import PRESETS, load_config
from gpr.core.errors import GprInputError


@pytest.mark.parametrize("name", PRESETS)
def test_presets_validate(name: str) -> None:
    cfg = load_config(name)
    assert cfg.preset == name


def test_preset_sizes_grow() -> None:
    sizes = [load_config(p).world.n_users for p in PRESETS]
    assert sizes == sorted(sizes) and sizes[0] == 200 and sizes[1] == 5000


def test_file_names_a_preset_and_overrides_win(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("preset: tiny\nseed: 3\nworld:\n  n_users: 321\n")
    cfg = load_config(file=f)
    assert (cfg.preset, cfg.seed, cfg.world.n_users, cfg.world.n_ads) == ("tiny", 3, 321, 400)
    cfg = load_config(file=f, overrides=["world.n_users=99"], seed=5)
    assert (cfg.world.n_users, cfg.seed) == (99, 5)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("world:\n  n_userz: 3\n", "world.n_userz"),
        ("world:\n  n_users: many\n", "world.n_users"),
        ("world:\n  n_users: 1\n", "world.n_users"),
        ("tokenizer:\n  method: magic\n", "tokenizer.method"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(GprInputError) as e:
        load_config(file=f)
    assert e.value.field == field and str(f) in str(e.value)


def test_unknown_preset_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(GprInputError, match="unknown preset"):
        load_config("huge")
    f = tmp_path / "bad.yaml"
    f.write_text("world: [1, 2\n")
    with pytest.raises(GprInputError, match="invalid YAML"):
        load_config(file=f)


def test_cascade_session_gap_default_is_the_market_rule() -> None:
    from gpr.core.config import CascadeConfig
    from gpr.market.sessions import SESSION_GAP_SECONDS

    assert CascadeConfig().session_gap_seconds == SESSION_GAP_SECONDS


def test_earlier_configs_upgrade_to_components() -> None:
    from gpr.core.config import GprConfig, upgrade

    old = {
        "model": {
            "content_input": True,
            "item_head": True,
            "item_head_neighbours": 50,
            "item_head_alpha": 0.5,
            "hte_side": True,
            "hte_session": True,
            "item_ids": False,
        },
        "train": {"threads": 2},
        "cascade": {"user_id": False, "intent": False, "intent_lr": 0.003, "threads": 1},
        "serve": {"rank_by": "logprob", "bid_weight": 0.5, "hte_weight": 2.0},
    }
    cfg = GprConfig.model_validate(upgrade(old))
    m = cfg.model
    assert m.inputs == ["sid", "content"] and m.hte_features == ["side", "session"]
    assert m.item_head is not None and (m.item_head.neighbours, m.item_head.alpha) == (50, 0.5)
    assert (cfg.serve.score.logp, cfg.serve.score.log_bid, cfg.serve.score.log_hte_value) == (
        1.0,
        0.5,
        2.0,
    )
    by_value = upgrade({"serve": {"rank_by": "value"}})["serve"]["score"]
    assert by_value == {"logp": 0.0, "log_hte_value": 1.0}
    assert old["model"]["item_head"] is True  # the input is not modified


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [("cascade", "intent", True), ("model", "item_ids", True), ("align", "support", True)],
)
def test_a_retired_option_that_was_on_is_refused(section: str, field: str, value: object) -> None:
    from gpr.core.config import upgrade

    with pytest.raises(GprInputError, match=f"retired option {section}.{field}") as e:
        upgrade({section: {field: value}})
    assert e.value.field == f"{section}.{field}"

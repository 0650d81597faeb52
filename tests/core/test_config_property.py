"""Property: any mutation of a config is either refused with one GprInputError naming a field, or
accepted; an accepted model section builds the model and takes a finite training step."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpr.core.config import load_config
from gpr.core.errors import GprInputError
from gpr.model.journey import collate, make_windows, positions_for_split
from gpr.model.prepare import Prepared, prepare
from gpr.model.registry import build_model

TINY = load_config("tiny").model_dump(mode="json")
LEAVES = sorted(
    f"{section}.{field}"
    for section in ("world", "model", "train", "tokenizer", "cascade", "align", "runtime")
    for field in TINY[section]
)
VALUES = st.one_of(
    st.integers(-2, 48),
    st.floats(-1.0, 2.0, allow_nan=False),
    st.booleans(),
    st.none(),
    st.sampled_from(["", "abc", "side", "[1, 2]", "{a: 1}"]),
    st.lists(st.sampled_from(["sid", "content", "side", "session", 0.5]), max_size=3),
)


@pytest.fixture(scope="module")
def prep(tiny_world: Path, tiny_sids: Path) -> Prepared:
    cfg = load_config("tiny", overrides=["model.inputs=[sid, content]"])
    return prepare(tiny_world, tiny_sids, cfg.model, cfg.tokenizer.codebook_size)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(leaf=st.sampled_from(LEAVES), value=VALUES)
def test_a_mutated_config_is_refused_or_trains(prep: Prepared, leaf: str, value: Any) -> None:
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    try:
        cfg = load_config("tiny", overrides=[f"{leaf}={text}"])
    except GprInputError as e:
        assert e.field and str(e).count("\n") == 0
        return
    if not leaf.startswith("model.") or cfg.model.mtp_heads > prep.targets.shape[1]:
        return
    mcfg = cfg.model
    if mcfg.max_len < 16 or mcfg.layers * mcfg.d_model > 2048:
        return  # accepted, but too big or too short for a one-second step
    torch.manual_seed(0)
    model = build_model(prep, mcfg)
    pos = positions_for_split(prep.journeys, prep.pred_mask, "train")
    wins = make_windows(prep.journeys, mcfg.max_len, pos)[:4]
    b = collate(prep.journeys, wins, prep.sids, prep.targets, prep.pred_mask, (0,), mcfg.max_len)
    loss = model.loss(b, prep.trie)["loss"]
    loss.backward()
    assert math.isfinite(float(loss.detach()))

"""The HHD: leak-freedom, mask reference, components on/off, trie-constrained generation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from gpr.core.config import ItemHeadConfig, ModelConfig, ValueGuide, load_config
from gpr.model.gpr import GPRModel, beam_search, merge_ranked
from gpr.model.journey import E, I, O, U, collate, make_windows, positions_for_split
from gpr.model.masks import NO_TIME, TIME_BUCKETS, hybrid_mask, time_buckets
from gpr.model.prepare import Prepared, prepare
from gpr.model.registry import build_model, model_config_for
from gpr.model.thoughts import cached_topic_table, default_template
from gpr.model.trie import Trie
from tests.conftest import overfit


@pytest.fixture(scope="module")
def prep(tiny_world: Path, tiny_sids: Path) -> Prepared:
    cfg = load_config("tiny", overrides=["model.content_input=true"])  # loads the content table
    return prepare(tiny_world, tiny_sids, cfg.model, cfg.tokenizer.codebook_size)


def _batch(prep: Prepared, n: int = 8, max_len: int = 48):  # type: ignore[no-untyped-def]
    pos = positions_for_split(prep.journeys, prep.pred_mask, "train")
    wins = make_windows(prep.journeys, max_len, pos)[:n]
    return collate(prep.journeys, wins, prep.sids, prep.targets, prep.pred_mask, (0,), max_len)


def _reference_mask(types: list[int]) -> np.ndarray:
    """The spec's rule, written out token by token."""
    t = len(types)
    seg, s = [], 0
    for ty in types:
        seg.append(s)
        s += ty in (E, I)
    m = np.zeros((t, t), dtype=bool)
    for q in range(t):
        for k in range(t):
            if types[q] == U:
                ok = types[k] == U
            elif types[k] == U or types[q] in (O, E) and types[k] in (O, E) and seg[q] == seg[k]:
                ok = True
            else:
                ok = k <= q
            m[q, k] = ok or q == k
    return m


def test_hybrid_mask_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        n_u = int(rng.integers(0, 4))
        body = rng.choice([O, E, I], size=int(rng.integers(1, 25)), p=[0.5, 0.25, 0.25]).tolist()
        types = [U] * n_u + body
        got = hybrid_mask(torch.tensor([types]))[0].numpy()
        assert (got == _reference_mask(types)).all()


def _first_level_logits(model: GPRModel, b) -> torch.Tensor:  # type: ignore[no-untyped-def]
    h, ctx, ok = model.encode(b)
    out = []
    for j in range(model.cfg.mtp_heads):
        prefix, _ = model.ptd.prefix(h, ctx, ok, j)
        out.append(model.ptd.logits(prefix, model.code_inputs(b.codes.new_zeros(h.shape[0], 0)))[0])
    return torch.stack(out, 1)


def _randomise_time_bias(model: GPRModel) -> None:
    """Replace the zero-initialised temporal biases by N(0, 1) ones."""
    for name, w in model.hsd.named_parameters():
        if "time_bias" in name:
            torch.nn.init.normal_(w, std=1.0)


@pytest.mark.parametrize(
    ("hybrid", "content", "time_bias"),
    [(True, False, False), (False, False, False), (True, True, False), (True, False, True)],
)
def test_no_future_token_changes_a_prediction(
    prep: Prepared, hybrid: bool, content: bool, time_bias: bool
) -> None:
    torch.manual_seed(0)
    mcfg = load_config("tiny").model.model_copy(
        update={
            "hybrid_attention": hybrid,
            "dropout": 0.0,
            "inputs": ["sid", "content"] if content else ["sid"],
            "time_bias": time_bias,
        }
    )
    model = build_model(prep, mcfg).eval()
    if time_bias:  # a non-zero bias, so that later timestamps could matter
        _randomise_time_bias(model)
    b = _batch(prep)
    base = _first_level_logits(model, b)
    gen = torch.Generator().manual_seed(1)
    for kind in (O, E, I, None):  # perturb one token type at a time, then everything
        for p in range(len(b.pred_b)):
            row, t = int(b.pred_b[p]), int(b.pred_t[p])
            after = torch.zeros_like(b.ttype, dtype=torch.bool)
            after[row, t + 1 :] = True
            sel = after & (b.ttype >= 0) & ((b.ttype == kind) if kind is not None else True)
            if not sel.any():
                continue
            codes, field, action = b.codes.clone(), b.field.clone(), b.action.clone()
            codes[sel] = torch.randint(0, 16, codes[sel].shape, generator=gen)
            item = b.item.clone()
            item[sel & (item >= 0)] = (item[sel & (item >= 0)] + 1) % len(prep.sids.codes)
            field[sel] = torch.randint(0, 3, field[sel].shape, generator=gen)
            action[sel] = (action[sel] + 1) % 3
            ts = b.ts.clone()
            ts[sel] = ts[sel] + torch.randint(1, 10**6, ts[sel].shape, generator=gen)
            ttype = b.ttype.clone()
            if kind is None:
                ttype[sel] = torch.where(ttype[sel] == O, E, O)
            pert = type(b)(
                **{
                    **b.__dict__,
                    "codes": codes,
                    "field": field,
                    "action": action,
                    "ttype": ttype,
                    "item": item,
                    "ts": ts,
                }
            )
            new = _first_level_logits(model, pert)
            torch.testing.assert_close(new[p], base[p], rtol=1e-5, atol=1e-5)
            # and the perturbation is not vacuous: a later prediction in that row does change
            later = [
                q for q in range(len(b.pred_b)) if int(b.pred_b[q]) == row and int(b.pred_t[q]) > t
            ]
            if later and kind is None:
                assert not torch.allclose(new[later[-1]], base[later[-1]])


COMPONENTS = [
    {},
    {"hybrid_attention": False},
    {"token_aware_ln": False},
    {"token_aware_ffn": False},
    {"mor_extra": 0},
    {"thinking_tokens": 0},
    {"refining": False},
    {"hte": False},
    {"mtp_heads": 1},
    {"inputs": ["sid", "content"]},
    {"time_bias": True},
    {"item_head": ItemHeadConfig()},
    {"item_head": ItemHeadConfig(neighbours=8)},
]


@pytest.mark.parametrize(
    "change", COMPONENTS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "full"
)
def test_each_component_trains(prep: Prepared, change: dict) -> None:  # type: ignore[type-arg]
    torch.manual_seed(0)
    mcfg = load_config("tiny").model.model_copy(update={**change, "dropout": 0.0})
    if mcfg.mtp_heads > prep.targets.shape[1]:
        pytest.skip("targets prepared for fewer heads")
    model = build_model(prep, mcfg)
    b = _batch(prep, n=6)
    losses = overfit(model, b, prep.trie)
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0], losses
    grads = [p.grad for p in model.hsd.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_content_input_tells_apart_items_with_the_same_codes(prep: Prepared) -> None:
    torch.manual_seed(0)
    b = _batch(prep, n=2)
    swapped = b.item.clone()
    swapped[b.item >= 0] = (b.item[b.item >= 0] + 1) % len(prep.sids.codes)  # codes kept
    pert = type(b)(**{**b.__dict__, "item": swapped})
    for on in (False, True):
        inputs = ["sid", "content"] if on else ["sid"]
        mcfg = load_config("tiny").model.model_copy(update={"inputs": inputs, "dropout": 0.0})
        emb = build_model(prep, mcfg).eval().embed
        same = torch.allclose(emb(b), emb(pert))
        assert same != on
        if on:  # padding and U/E tokens get no item embedding
            keep = b.item < 0
            torch.testing.assert_close(emb(b)[keep], emb(pert)[keep])


def test_content_input_needs_the_content_table(prep: Prepared) -> None:
    mcfg = load_config("tiny").model.model_copy(update={"inputs": ["sid", "content"]})
    with pytest.raises(ValueError, match="content"):
        build_model(replace(prep, content_table=None), mcfg)
    assert prep.content_table is not None
    ids = prep.journeys.item[prep.journeys.item >= 0][:5]
    assert prep.content_table[ids].abs().sum(1).gt(0).all()


def test_journeys_carry_the_event_timestamps(prep: Prepared, tiny_world: Path) -> None:
    j = prep.journeys
    ev = pq.read_table(tiny_world / "events.parquet", columns=["token_type", "timestamp"])
    ev_ts = [t for k, t in zip(*ev.to_pydict().values(), strict=True) if k != "U"]
    body = j.ttype != U
    assert (j.ts[~body] == 0).all()
    assert sorted(j.ts[body].tolist()) == sorted(ev_ts)
    for u in range(j.n_users):  # journey order is time order within a user
        t = j.ts[j.indptr[u] + j.n_user_tokens : j.indptr[u + 1]]
        assert (np.diff(t) >= 0).all()


def test_time_buckets_on_known_gaps() -> None:
    ttype = torch.tensor([[U, O, O, E, I, -1]])
    ts = torch.tensor([[0, 100, 101, 400, 100 + 2**30, 0]])
    got = time_buckets(ts, ttype)[0]
    # |dt| < 1 s -> 0; 1 s -> 1; 300 s -> 1 + floor(log2 300) = 9; 2^30 s -> the last bucket
    assert got[1, 1] == 0 and got[1, 2] == got[2, 1] == 1
    assert got[1, 3] == got[3, 1] == 9 and got[2, 3] == 9  # 299 s: also 1 + 8
    assert got[1, 4] == TIME_BUCKETS - 1
    assert (got[0] == NO_TIME).all() and (got[:, 0] == NO_TIME).all()  # U token
    assert (got[5] == NO_TIME).all() and (got[:, 5] == NO_TIME).all()  # padding


def test_time_bias_reads_the_gaps_between_events(prep: Prepared) -> None:
    torch.manual_seed(0)
    mcfg = load_config("tiny").model.model_copy(update={"time_bias": True, "dropout": 0.0})
    model = build_model(prep, mcfg).eval()
    b = _batch(prep, n=4)
    base = _first_level_logits(model, b)
    stretched = type(b)(**{**b.__dict__, "ts": b.ts * 7})  # every gap 7x longer
    # a zero-initialised bias: the model starts as the one without it
    torch.testing.assert_close(_first_level_logits(model, stretched), base)
    _randomise_time_bias(model)
    assert not torch.allclose(_first_level_logits(model, stretched), _first_level_logits(model, b))


def test_hstu_baseline_is_gpr_with_components_off() -> None:
    m = model_config_for("hstu", ModelConfig())
    assert not (m.hybrid_attention or m.token_aware_ln or m.token_aware_ffn or m.refining or m.hte)
    assert (m.mor_extra, m.thinking_tokens, m.mtp_heads) == (0, 0, 1)


def test_generation_only_produces_legal_and_eligible_items(prep: Prepared) -> None:
    torch.manual_seed(0)
    model = build_model(prep, load_config("tiny").model).eval()
    b = _batch(prep, n=4)
    items, scores = model.generate(b, prep.trie, beam=20)
    valid = set(prep.trie.items.tolist())
    got = items[items >= 0].tolist()
    assert got and set(got) <= valid
    assert all(len(set(r[r >= 0].tolist())) == int((r >= 0).sum()) for r in items)  # unique per row
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    # with a per-request eligibility mask, only eligible ads come out
    n = len(b.pred_b)
    gen = torch.Generator().manual_seed(0)
    elig = torch.rand(n, len(prep.trie.items), generator=gen) < 0.03  # fewer than the beam
    items, _ = model.generate(b, prep.trie, beam=20, eligible=elig)
    for r in range(n):
        allowed = set(prep.trie.items[elig[r]].tolist())
        out = items[r][items[r] >= 0].tolist()
        assert set(out) <= allowed and len(out) == min(20, len(allowed))


@pytest.mark.parametrize("thinking", [0, 2])
def test_incremental_beam_search_equals_the_teacher_forced_decoder(
    prep: Prepared, thinking: int
) -> None:
    """The cached decoder (eval) gives the beams and log p of recomputing the whole decoder at
    every level (the pass training uses, dropout off), and each beam's log p equals its path's
    teacher-forced log p."""
    torch.manual_seed(1)
    cfg = load_config("tiny", overrides=["model.dropout=0", f"model.thinking_tokens={thinking}"])
    model = build_model(prep, cfg.model).eval()
    b = _batch(prep, n=6)
    elig = torch.rand(
        len(b.pred_b), len(prep.trie.items), generator=torch.Generator().manual_seed(2)
    )
    elig = elig < 0.5
    counts = prep.trie.eligible_counts(elig)
    h, ctx, ok = model.encode(b)
    prefix, _ = model.ptd.prefix(h, ctx, ok, 0)
    items, logp = beam_search(model, prefix, prep.trie, 12, counts)
    model.train()  # dropout is 0: the same function, without the cache
    ref_items, ref_logp = beam_search(model, prefix, prep.trie, 12, counts)
    model.eval()
    assert torch.equal(items, ref_items)
    torch.testing.assert_close(logp, ref_logp, rtol=1e-5, atol=1e-5)
    col = prep.trie.column(items)
    rows = torch.arange(len(items)).repeat_interleave(items.shape[1])
    ok_ = col.reshape(-1) >= 0
    paths = prep.trie.paths[col.reshape(-1)[ok_]]
    tf = model.path_logp(prefix[rows[ok_]], paths, prep.trie, counts=counts, rows=rows[ok_])
    torch.testing.assert_close(tf, logp.reshape(-1)[ok_], rtol=1e-5, atol=1e-5)


def test_value_guided_beam(prep: Prepared) -> None:
    """A vanishing value weight is the fixed beam; a large one changes the beam toward high-value
    prefixes; pruning narrows it; every ad stays legal and eligible, log p stays the path's."""
    torch.manual_seed(3)
    model = build_model(prep, load_config("tiny").model).eval()
    assert model.hte is not None
    b = _batch(prep, n=6)
    gen = torch.Generator().manual_seed(4)
    elig = torch.rand(len(b.pred_b), len(prep.trie.items), generator=gen) < 0.5
    counts = prep.trie.eligible_counts(elig)
    h, ctx, ok = model.encode(b)
    prefix, _ = model.ptd.prefix(h, ctx, ok, 0)
    fixed, fixed_lp = beam_search(model, prefix, prep.trie, 10, counts)
    tiny = ValueGuide(weight=1e-9)
    items, lp = beam_search(model, prefix, prep.trie, 10, counts, h, tiny)
    assert torch.equal(items, fixed)
    torch.testing.assert_close(lp, fixed_lp)
    with torch.no_grad():  # make the value decisive and far from the policy
        model.hte.value[2].bias.fill_(0.0)
        model.hte.value[2].weight.normal_(0, 5.0, generator=gen)
    strong, strong_lp = beam_search(model, prefix, prep.trie, 10, counts, h, ValueGuide(weight=5.0))
    assert not torch.equal(strong, fixed)
    pruned, _ = beam_search(model, prefix, prep.trie, 10, counts, h, ValueGuide(prune=0.9))
    assert (pruned >= 0).sum() < (strong >= 0).sum()
    for out in (strong, pruned):
        col = prep.trie.column(out)
        assert (col[out >= 0] >= 0).all()
        rows = torch.arange(len(out)).unsqueeze(1).expand_as(out)
        assert elig[rows[out >= 0], col[out >= 0]].all()
    ok_ = strong >= 0
    rows = torch.arange(len(strong)).repeat_interleave(strong.shape[1])[ok_.reshape(-1)]
    paths = prep.trie.paths[prep.trie.column(strong[ok_])]
    tf = model.path_logp(prefix[rows], paths, prep.trie, counts=counts, rows=rows)
    torch.testing.assert_close(tf, strong_lp[ok_], rtol=1e-5, atol=1e-5)


def test_trie_on_hand_made_paths() -> None:
    paths = np.array([[0, 1, 0], [0, 1, 1], [2, 0, 0]])
    trie = Trie(paths, [3, 2, 2], np.array([10, 11, 12]))
    assert trie.legal(0, torch.tensor([0])).tolist() == [[True, False, True]]
    par = trie.parents(torch.tensor([[0, 1, 1], [1, 0, 0]]))
    assert par[0].tolist()[0] == 0 and (par[0] >= 0).all() and par[1, 1] == -1
    counts = trie.eligible_counts(torch.tensor([[False, False, True]]))
    legal = trie.legal(0, torch.tensor([0]), counts, torch.tensor([0]))
    assert legal.tolist() == [[False, False, True]]
    with pytest.raises(Exception, match="share a full path"):
        Trie(np.array([[0, 1, 0], [0, 1, 0]]), [3, 2, 2], np.array([1, 2]))


def test_merge_ranked_dedups_across_heads() -> None:
    items = torch.tensor([[5, 7, 5, 9, -1]])
    scores = torch.tensor([[-1.0, -3.0, -0.5, -2.0, -torch.inf]])
    it, sc = merge_ranked(items, scores, 4)
    assert it.tolist() == [[5, 9, 7, -1]] and sc[0, 0] == -0.5


def _fake_encoder(texts: list[str]) -> np.ndarray:
    """Deterministic stand-in for MiniLM: a seeded random vector per text."""
    return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8) for t in texts])


def test_thought_tokens_train_and_never_see_the_future(tiny_world: Path, tiny_sids: Path) -> None:
    cfg = load_config("tiny", overrides=["model.thought_tokens=2", "model.dropout=0.0"])
    tp = prepare(tiny_world, tiny_sids, cfg.model, cfg.tokenizer.codebook_size, _fake_encoder)
    assert tp.thought_table is not None and tp.thought_table.shape[1] == 8
    torch.manual_seed(0)
    model = build_model(tp, cfg.model)
    pos = positions_for_split(tp.journeys, tp.pred_mask, "train")
    wins = make_windows(tp.journeys, 48, pos)[:6]
    b = tp.batch(wins, (0,), 48, 2)
    assert b.thought.shape == (6, 2) and (b.thought >= 0).any()
    losses = overfit(model, b, tp.trie)
    assert losses[-1] < 0.8 * losses[0]
    assert (
        model.thought_proj.weight.grad is not None
        and model.thought_proj.weight.grad.abs().sum() > 0
    )
    # thoughts summarise only what happened before the window starts
    model.eval()
    base = _first_level_logits(model, b)
    codes = b.codes.clone()
    codes[:, -5:] = (codes[:, -5:] + 1) % 16
    pert = type(b)(**{**b.__dict__, "codes": codes})
    early = b.pred_t < b.ttype.shape[1] - 5
    torch.testing.assert_close(_first_level_logits(model, pert)[early], base[early])


def test_thought_table_cache_skips_the_encoder(tmp_path: Path) -> None:
    calls: list[int] = []

    def factory() -> Callable[[list[str]], np.ndarray]:
        calls.append(1)
        return _fake_encoder

    first = cached_topic_table(tmp_path, ["skincare", "hair"], factory, "fake")
    again = cached_topic_table(tmp_path, ["skincare", "hair"], factory, "fake")
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, _fake_encoder(default_template(["skincare", "hair"])), 1e-6)
    assert len(calls) == 1 and len(list(tmp_path.glob("thoughts_*.npy"))) == 1
    cached_topic_table(tmp_path, ["skincare"], factory, "fake")  # other texts: a new entry
    cached_topic_table(tmp_path, ["skincare", "hair"], factory, "other")  # other encoder too
    assert len(calls) == 3 and len(list(tmp_path.glob("thoughts_*.npy"))) == 3


def test_time_bias_starts_as_the_model_without_it(prep: Prepared) -> None:
    b = _batch(prep, n=4)
    out = []
    for on in (False, True):
        torch.manual_seed(0)
        mcfg = load_config("tiny").model.model_copy(update={"time_bias": on, "dropout": 0.0})
        out.append(_first_level_logits(build_model(prep, mcfg).eval(), b))
    torch.testing.assert_close(out[1], out[0])


def test_content_source_tokenizer_is_what_the_sids_were_built_from(
    tiny_world: Path, tmp_path: Path
) -> None:
    from gpr.tokenizer.methods import load_tokenizer
    from gpr.tokenizer.pipeline import run_tokenize

    cfg = load_config("tiny", overrides=["tokenizer.collab_dim=4"])
    run_tokenize(tiny_world, cfg, tmp_path / "tok")
    text = prepare(
        tiny_world,
        tmp_path / "tok",
        cfg.model.model_copy(update={"item_head": ItemHeadConfig()}),
        cfg.tokenizer.codebook_size,
    )
    mcfg = cfg.model.model_copy(
        update={"item_head": ItemHeadConfig(), "content_source": "tokenizer"}
    )
    tp = prepare(tiny_world, tmp_path / "tok", mcfg, cfg.tokenizer.codebook_size)
    assert text.content_table is not None and tp.content_table is not None
    width = text.content_table.shape[1]
    assert tp.content_table.shape == (len(tp.sids.codes), width + 4)
    torch.testing.assert_close(tp.content_table[:, :width], text.content_table)
    ids = tp.trie.items.numpy()
    assert tp.content_table[ids, width:].abs().sum() > 0  # the collaborative part is there
    # the saved tokenizer maps exactly these vectors to the saved semantic IDs
    codes = load_tokenizer(tmp_path / "tok").encode(tp.content_table[ids].numpy())
    np.testing.assert_array_equal(codes, tp.sids.codes[ids])

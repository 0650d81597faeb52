"""The item head (model/item_head.py): its loss, exact SID scores, and the fused ranking."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gpr.core.config import ModelConfig, load_config
from gpr.model.gpr import GPRModel, beam_search
from gpr.model.journey import collate, make_windows, positions_for_split
from gpr.model.prepare import Prepared, prepare
from gpr.model.registry import build_model


@pytest.fixture(scope="module")
def prep(tiny_world: Path, tiny_sids: Path) -> Prepared:
    cfg = load_config("tiny", overrides=["model.item_head=true"])  # loads the content table
    return prepare(tiny_world, tiny_sids, cfg.model, cfg.tokenizer.codebook_size)


def _model(prep: Prepared, **head: object) -> GPRModel:
    """A tiny GPR-1 with an item head of the given settings (ItemHeadConfig fields)."""
    torch.manual_seed(0)
    base = load_config("tiny").model.model_dump()
    mcfg = ModelConfig.model_validate({**base, "item_head": head, "dropout": 0.0, "mtp_heads": 1})
    model = build_model(prep, mcfg)
    assert isinstance(model, GPRModel)
    return model.eval()


def _batch(prep: Prepared, n: int = 6):  # type: ignore[no-untyped-def]
    pos = positions_for_split(prep.journeys, prep.pred_mask, "train")
    wins = make_windows(prep.journeys, 48, pos)[:n]
    return collate(prep.journeys, wins, prep.sids, prep.targets, prep.pred_mask, (0,), 48)


def test_item_loss_is_the_full_softmax_cross_entropy(prep: Prepared) -> None:
    model = _model(prep, weight=0.0)
    b = _batch(prep)
    got = model.loss(b, prep.trie)
    h, ctx, ok = model.encode(b)
    rows = (prep.trie.parents(b.target_codes[:, 0]) >= 0).all(dim=1)
    _, cond = model.ptd.prefix(h[rows], ctx[rows], ok[rows], 0)
    assert model.item_head is not None
    keys = model.item_head.keys(model.embed, prep.trie)
    assert keys.shape == (len(prep.trie.items), model.cfg.d_model)
    logits = model.item_head.query(cond) @ keys.T
    want = F.cross_entropy(logits, prep.trie.column(b.targets[rows, 0]))
    torch.testing.assert_close(got["item_0"], want)
    # weight 0: reported, not added; weight 2: added twice
    weighted = _model(prep, weight=2.0).loss(b, prep.trie)
    torch.testing.assert_close(weighted["loss"] - got["loss"], 2 * want, rtol=1e-4, atol=1e-5)


def test_item_head_keys_read_the_content_vector(prep: Prepared) -> None:
    model = _model(prep)
    assert model.item_head is not None and prep.content_table is not None
    keys = model.item_head.keys(model.embed, prep.trie)
    with torch.no_grad():
        model.item_head.content[prep.trie.items[0]] += 1.0
    moved = model.item_head.keys(model.embed, prep.trie)
    assert not torch.allclose(moved[0], keys[0])
    torch.testing.assert_close(moved[1:], keys[1:])


def test_path_logp_equals_the_beam_scores(prep: Prepared) -> None:
    model = _model(prep)
    b = _batch(prep, n=4)
    h, ctx, ok = model.encode(b)
    prefix, _ = model.ptd.prefix(h, ctx, ok, 0)
    gen = torch.Generator().manual_seed(0)
    elig = torch.rand(len(b.pred_b), len(prep.trie.items), generator=gen) < 0.3
    for counts in (None, prep.trie.eligible_counts(elig)):
        items, scores = beam_search(model, prefix, prep.trie, 10, counts)
        p, k = items.shape
        paths = prep.trie.paths[prep.trie.column(items).reshape(-1)]
        rows = torch.arange(p).repeat_interleave(k)
        exact = model.path_logp(
            prefix.repeat_interleave(k, 0), paths, prep.trie, None, counts, rows
        )
        torch.testing.assert_close(exact.reshape(p, k), scores, rtol=1e-4, atol=1e-4)


def test_alpha_zero_no_widening_is_the_plain_beam(prep: Prepared) -> None:
    model = _model(prep, alpha=0.0, widen=0)
    b = _batch(prep, n=4)
    items, scores = model.generate(b, prep.trie, beam=12)
    h, ctx, ok = model.encode(b)
    prefix, _ = model.ptd.prefix(h, ctx, ok, 0)
    want_items, want_scores = beam_search(model, prefix, prep.trie, 12, None)
    assert torch.equal(items, want_items)
    torch.testing.assert_close(scores, want_scores)


def test_widening_brings_the_heads_top_items_and_respects_eligibility(prep: Prepared) -> None:
    n_items = len(prep.trie.items)
    model = _model(prep, alpha=1e4, widen=n_items)
    b = _batch(prep, n=4)
    items, scores = model.generate(b, prep.trie, beam=5)
    h, ctx, ok = model.encode(b)
    _, cond = model.ptd.prefix(h, ctx, ok, 0)
    assert model.item_head is not None
    head = model.item_head.logits(cond, model.item_head.keys(model.embed, prep.trie))
    # alpha dominates: the order is the head's, over the whole catalogue (widen = every item)
    got = head.gather(1, prep.trie.column(items))
    # (near-ties within gen / alpha may swap places)
    torch.testing.assert_close(got, head.topk(5, dim=1).values, rtol=0, atol=1e-3)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    gen = torch.Generator().manual_seed(1)
    elig = torch.rand(len(b.pred_b), n_items, generator=gen) < 0.2
    items, _ = model.generate(b, prep.trie, beam=5, eligible=elig)
    for r in range(len(b.pred_b)):
        out = items[r][items[r] >= 0].tolist()
        assert out and set(out) <= set(prep.trie.items[elig[r]].tolist())


def test_last_item_is_the_latest_item_token_before_each_prediction(prep: Prepared) -> None:
    b = _batch(prep)
    got = b.last_item()
    for p in range(len(b.pred_b)):
        row = b.item[b.pred_b[p], : int(b.pred_t[p]) + 1]
        seen = row[row >= 0]
        assert int(got[p]) == (int(seen[-1]) if len(seen) else -1)
    assert (got >= 0).any()


def test_neighbour_table_is_the_brute_force_content_knn(prep: Prepared) -> None:
    model = _model(prep, neighbours=5)
    head, trie = model.item_head, prep.trie
    assert head is not None
    cols, sims = head.neighbour_table(trie, chunk=7)  # several chunks
    unit = F.normalize(head.content, dim=1)
    assert cols.shape == sims.shape == (len(unit), 5)
    for q in (int(trie.items[0]), int(trie.items[-1]), 0):
        sim = unit[q] @ unit[trie.items].T
        own = int(trie.column(torch.tensor([q]))[0])
        if own >= 0:
            sim[own] = -torch.inf
        want = sim.topk(5)
        torch.testing.assert_close(sims[q], want.values)
        assert own not in cols[q].tolist()
        torch.testing.assert_close(sim[cols[q]], want.values)  # ties may swap columns


def test_neighbour_prior_adds_beta_times_cosine_at_the_neighbours(prep: Prepared) -> None:
    model = _model(prep, neighbours=4, beta=3.0)
    head, trie = model.item_head, prep.trie
    assert head is not None and head.log_beta is not None
    b = _batch(prep, n=4)
    h, ctx, ok = model.encode(b)
    _, cond = model.ptd.prefix(h, ctx, ok, 0)
    keys = head.keys(model.embed, trie)
    last = b.last_item()
    last[0] = -1  # no history item: no prior
    plain = head.logits(cond, keys)
    got = head.logits(cond, keys, last, trie)
    cols, sims = head.neighbour_table(trie)
    want = plain.clone()
    for p in range(1, len(last)):
        for c, s in zip(cols[last[p]].tolist(), sims[last[p]].tolist(), strict=True):
            if c >= 0:
                want[p, c] += 3.0 * s
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got[0], plain[0])
    # beta is learnt: the item loss has a gradient on it
    model.train()
    model.loss(b, trie)["loss"].backward()
    assert head.log_beta.grad is not None and head.log_beta.grad.abs() > 0


def test_neighbour_prior_needs_a_content_table() -> None:
    from gpr.model.item_head import ItemHead

    with pytest.raises(ValueError, match="item_head.neighbours"):
        ItemHead(8, None, neighbours=3)

"""The GPR model: HSD -> intent h_p -> PTD (per MTP head) -> semantic-ID path; HTE values.

Every component can be switched off in `ModelConfig`, so the HSTU baseline is this model with
causal attention, shared norms/FFN, no recursion, no thinking/refining, no HTE and one head.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpr.core.config import ModelConfig, ValueGuide
from gpr.model.embed import TokenEmbedding
from gpr.model.hsd import HSD
from gpr.model.hte import HTE, side_width
from gpr.model.item_head import ItemHead
from gpr.model.journey import Batch
from gpr.model.masks import causal_mask, hybrid_mask, time_buckets
from gpr.model.ptd import PTD, masked_log_softmax, start_decode, step_decode
from gpr.model.trie import Trie


class GPRModel(nn.Module):
    mtp_w: torch.Tensor
    thought_table: torch.Tensor

    def __init__(
        self,
        cfg: ModelConfig,
        levels: int,
        codebook_size: int,
        dedup_size: int,
        thought_table: torch.Tensor | None = None,
        content: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        d = cfg.d_model
        if cfg.content_input and content is None:
            raise ValueError("model.content_input needs the items' content table (prepare())")
        self.cfg = cfg
        self.levels = levels
        self.level_sizes = [codebook_size] * levels + [dedup_size]
        self.embed = TokenEmbedding(
            d,
            levels,
            codebook_size,
            cfg.max_len,
            content if cfg.content_input else None,
        )
        self.hsd = HSD(
            d,
            cfg.layers,
            cfg.heads,
            cfg.dropout,
            cfg.token_aware_ln,
            cfg.token_aware_ffn,
            cfg.mor_extra,
            cfg.time_bias,
        )
        self.ptd = PTD(
            d,
            cfg.heads,
            cfg.mtp_heads,
            cfg.thinking_tokens,
            cfg.refining,
            cfg.refine_steps,
            cfg.decoder_layers,
            self.level_sizes,
            cfg.dropout,
        )
        self.item_head = (
            ItemHead(d, content, cfg.item_head.neighbours, cfg.item_head.beta)
            if cfg.item_head is not None
            else None
        )
        side = side_width(cfg.hte_side, cfg.hte_session)
        self.hte = HTE(d, levels, side) if cfg.hte else None
        self.thoughts = cfg.thought_tokens > 0 and thought_table is not None
        if self.thoughts:
            assert thought_table is not None
            self.register_buffer("thought_table", thought_table.float())
            self.thought_proj = nn.Linear(thought_table.shape[1], d)
        w = torch.tensor(cfg.mtp_weights or [1.0] * cfg.mtp_heads, dtype=torch.float)
        self.register_buffer("mtp_w", w / w.sum())

    # --- user understanding -------------------------------------------------------------------
    def encode(self, b: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Intent h_p (P, d) at each prediction position and its recent context (P, W, d) + mask."""
        x, ttype, pred_t, ts = self.embed(b), b.ttype, b.pred_t, b.ts
        if self.thoughts and b.thought.numel():
            # thought tokens go in front and behave like U tokens (visible to all)
            tt = b.thought
            xt = self.thought_proj(self.thought_table[tt.clamp(min=0)])
            xt = xt + self.embed.type_emb(torch.zeros_like(tt))
            x = torch.cat([xt * (tt >= 0).unsqueeze(-1), x], dim=1)
            ttype = torch.cat([torch.where(tt >= 0, 0, -1), ttype], dim=1)
            pred_t = pred_t + tt.shape[1]
            if self.cfg.time_bias:  # batches built without timestamps have an empty ts
                ts = torch.cat([torch.zeros_like(tt), ts], dim=1)
        mask = hybrid_mask(ttype) if self.cfg.hybrid_attention else causal_mask(ttype)
        tb = time_buckets(ts, ttype) if self.cfg.time_bias else None
        hid = self.hsd(x, ttype.clamp(min=0), mask, tb)
        w = self.cfg.recent_window
        idx = pred_t.unsqueeze(1) - torch.arange(w, device=hid.device).unsqueeze(0)  # (P, W)
        ok = idx >= 0
        rows = b.pred_b.unsqueeze(1).expand_as(idx)
        ok &= ttype[rows, idx.clamp(min=0)] >= 0
        ctx = hid[rows, idx.clamp(min=0)]
        return hid[b.pred_b, pred_t], ctx, ok

    def code_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, m) codes of levels 1..m (m <= L) -> (N, m, d) decoder inputs."""
        k = self.level_sizes[0]
        embs = [self.embed.codes[lv](codes[:, lv].clamp(0, k)) for lv in range(codes.shape[1])]
        return (
            torch.stack(embs, dim=1)
            if embs
            else codes.new_zeros(codes.shape[0], 0, self.cfg.d_model, dtype=torch.float)
        )

    # --- training -----------------------------------------------------------------------------
    def loss(
        self, b: Batch, trie: Trie, target_weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        h, ctx, ok = self.encode(b)
        total = h.new_zeros(())
        out: dict[str, torch.Tensor] = {}
        keys: torch.Tensor | None = None  # the item head's keys, built once per batch
        last = b.last_item()
        for j in range(self.cfg.mtp_heads):
            paths = b.target_codes[:, j]  # (P, L+1)
            parents = trie.parents(paths)
            rows = (parents >= 0).all(dim=1)
            if not rows.any():
                continue
            prefix, cond = self.ptd.prefix(h[rows], ctx[rows], ok[rows], j)
            p = paths[rows]
            nll = -self.path_logp(prefix, p, trie, parents[rows])
            w = target_weight[rows, j] if target_weight is not None else torch.ones_like(nll)
            head_loss = (nll * w).sum() / w.sum().clamp(min=1e-8)
            out[f"gen_{j}"] = head_loss.detach()
            total = total + self.mtp_w[j] * head_loss
            if self.item_head is not None:
                keys = self.item_head.keys(self.embed, trie) if keys is None else keys
                col = trie.column(b.targets[rows, j])
                lg = self.item_head.logits(cond, keys, last[rows], trie)
                ce = F.cross_entropy(lg, col.clamp(min=0), reduction="none")
                iw = w * (col >= 0)
                item_loss = (ce * iw).sum() / iw.sum().clamp(min=1e-8)
                out[f"item_{j}"] = item_loss.detach()
                assert self.cfg.item_head is not None
                total = total + self.mtp_w[j] * self.cfg.item_head.weight * item_loss
            if j == 0 and self.ptd.refiner is not None:
                target = F.layer_norm(self.embed.item(p[:, : self.levels]).detach(), (h.shape[-1],))
                diff = self.ptd.refiner.loss(target, cond)
                out["diffusion"] = diff.detach()
                total = total + self.cfg.diffusion_weight * diff
        if self.hte is not None:
            shown = (b.shown_action >= 0) & (b.target_codes[:, 0, 0] >= 0)
            if shown.any():
                pre = self.embed.prefix(b.target_codes[shown, 0, : self.levels].clamp(min=0))
                v = self.hte(h[shown], pre)
                click = (b.shown_action[shown] >= 1).float()
                hte = F.binary_cross_entropy_with_logits(
                    v["value"], click.unsqueeze(1).expand_as(v["value"])
                )
                hte = hte + F.binary_cross_entropy_with_logits(v["ctr"], click)
                clicked = click > 0
                if clicked.any():
                    conv = (b.shown_action[shown][clicked] == 2).float()
                    hte = hte + F.binary_cross_entropy_with_logits(v["cvr"][clicked], conv)
                out["hte"] = hte.detach()
                total = total + self.cfg.hte_weight * hte
        out["loss"] = total
        return out

    def path_logp(
        self,
        prefix: torch.Tensor,
        paths: torch.Tensor,
        trie: Trie,
        parents: torch.Tensor | None = None,
        counts: list[torch.Tensor] | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced log p of full paths (N, L+1) after PTD prefixes (N, n_prefix, d), each
        level normalised over its legal (with `counts`: eligible) codes, as beam search does."""
        parents = trie.parents(paths) if parents is None else parents
        logits = self.ptd.logits(prefix, self.code_inputs(paths[:, : len(self.level_sizes) - 1]))
        logp = prefix.new_zeros(paths.shape[0])
        for lv, lg in enumerate(logits):
            lp = masked_log_softmax(lg, trie.legal(lv, parents[:, lv], counts, rows))
            logp = logp + lp.gather(1, paths[:, lv : lv + 1].clamp(min=0)).squeeze(1)
        return logp

    # --- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        b: Batch,
        trie: Trie,
        beam: int,
        eligible: torch.Tensor | None = None,
        counts: Any = None,
        guide: ValueGuide | None = None,
        encoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Trie-constrained beam search for every MTP head; union ranked by log-probability
        (with the item head: log p_SID + item_head.alpha · log p_head).

        eligible: (P, A) bool over `trie.items` (None = every item); `counts`: what `trie.legal`
        reads instead of the counts made from `eligible` (a live catalogue's `Eligibility`);
        `guide`: the value-guided beam (None: fixed width); `encoded`: `encode(b)` when the
        caller has it already.
        Returns item ids (P, N) (-1 padded, unique per row, best first) and their scores.
        """
        parts = self.candidates(b, trie, beam, eligible, counts, guide, encoded)
        alpha = self.cfg.item_head.alpha if self.cfg.item_head is not None else 0.0
        return rank_candidates(parts, alpha, beam)

    @torch.no_grad()
    def candidates(
        self,
        b: Batch,
        trie: Trie,
        beam: int,
        eligible: torch.Tensor | None = None,
        counts: Any = None,
        guide: ValueGuide | None = None,
        encoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per MTP head: candidate items (P, C) (-1 padded), their SID log p and their item-head
        log p (zeros without the head). The candidates are the head's beam, plus the item head's
        top `item_head.widen` items, which get their exact SID log p (`path_logp`) so every
        candidate is scored the same way."""
        h, ctx, ok = self.encode(b) if encoded is None else encoded
        if counts is None and eligible is not None:
            counts = trie.eligible_counts(eligible)
        keys = self.item_head.keys(self.embed, trie) if self.item_head is not None else None
        last = b.last_item()
        out = []
        for j in range(self.cfg.mtp_heads):
            prefix, cond = self.ptd.prefix(h, ctx, ok, j)
            items, sid = beam_search(self, prefix, trie, beam, counts, h, guide)
            if keys is None:
                out.append((items, sid, torch.zeros_like(sid)))
                continue
            assert self.item_head is not None
            lg = self.item_head.logits(cond, keys, last, trie)
            lp_head = torch.log_softmax(lg, dim=-1)  # (P, A)
            if eligible is not None:
                lp_head = lp_head.masked_fill(~eligible, -torch.inf)
            assert self.cfg.item_head is not None
            widen = min(self.cfg.item_head.widen, lp_head.shape[1])
            if widen > 0:
                top_lp, top_col = lp_head.topk(widen, dim=1)
                p = prefix.shape[0]
                rows = torch.arange(p, device=prefix.device).repeat_interleave(widen)
                gen = self.path_logp(
                    prefix.repeat_interleave(widen, dim=0),
                    trie.paths[top_col.reshape(-1)],
                    trie,
                    counts=counts,
                    rows=rows,
                ).reshape(p, widen)
                found = torch.isfinite(top_lp)
                items = torch.cat([items, torch.where(found, trie.items[top_col], -1)], dim=1)
                sid = torch.cat([sid, torch.where(found, gen, -torch.inf)], dim=1)
            col = trie.column(items)
            head = torch.where(col >= 0, lp_head.gather(1, col.clamp(min=0)), -torch.inf)
            out.append((items, sid, head))
        return out

    @torch.no_grad()
    def hte_probs(
        self,
        b: Batch,
        codes: torch.Tensor,
        side: torch.Tensor | None = None,
        h: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """HTE's pCTR and pCVR of candidate paths `codes` (P, N, L) for each prediction of b;
        `side` (P, N, S): their side features, for an HTE that takes them; `h`: the intent
        when the caller has encoded b already."""
        if self.hte is None:
            raise ValueError("this model has no HTE (model.hte = false)")
        if h is None:
            h, _, _ = self.encode(b)
        p, n, n_lv = codes.shape
        pre = self.embed.prefix(codes.clamp(min=0)).reshape(p * n, n_lv, -1)
        flat = side.reshape(p * n, -1) if side is not None else None
        v = self.hte(h.repeat_interleave(n, dim=0), pre, flat)
        return torch.sigmoid(v["ctr"]).reshape(p, n), torch.sigmoid(v["cvr"]).reshape(p, n)


def beam_search(
    model: GPRModel,
    prefix: torch.Tensor,
    trie: Trie,
    beam: int,
    counts: Any,
    h: torch.Tensor | None = None,
    guide: ValueGuide | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched beam search over the trie levels -> leaf items (P, beam) and log-probs.

    In eval mode the decoder runs incrementally: the prefix once per request, then one token per
    beam and level over cached keys and values (`ptd.start_decode` / `step_decode`). With a
    `guide` (and the intent `h`), the semantic levels keep the beam by log p plus HTE's prefix
    value (`value_step`); the returned log p is the path's own."""
    p, dev = prefix.shape[0], prefix.device
    nodes = torch.zeros(p, 1, dtype=torch.long, device=dev)
    logp = torch.zeros(p, 1, device=dev)
    codes = torch.zeros(p, 1, 0, dtype=torch.long, device=dev)
    cache = None
    emb = prefix.new_zeros(p, 1, prefix.shape[-1])  # cumulative prefix embedding (guide)
    for lv in range(trie.depth):
        w = nodes.shape[1]
        if model.training:  # dropout on: the teacher-forced pass, as in training
            flat_pre = prefix.repeat_interleave(w, dim=0)
            flat_codes = codes.reshape(p * w, lv)
            lg = model.ptd.logits(flat_pre, model.code_inputs(flat_codes))[lv]
        elif cache is None:
            lg, cache = start_decode(model.ptd, prefix)
        else:
            z = model.embed.codes[lv - 1](codes[:, :, -1].clamp(0, model.level_sizes[0]))
            lg = step_decode(model.ptd, cache, z, lv).reshape(p * w, -1)
        rows = torch.arange(p, device=dev).repeat_interleave(w)
        legal = trie.legal(lv, nodes.reshape(-1), counts, rows)
        lp = masked_log_softmax(lg, legal).reshape(p, w, -1)
        total = (logp.unsqueeze(-1) + lp).reshape(p, -1)
        total = total.masked_fill(total.isnan(), -torch.inf)
        size = lp.shape[-1]
        if guide is not None and h is not None and lv < len(model.embed.codes):
            logp, idx, emb = value_step(model, h, emb, total, size, lv, beam, guide)
        else:
            logp, idx = total.topk(min(beam, total.shape[1]), dim=1)
        src, code = idx // size, idx % size
        parent = nodes.gather(1, src)
        nxt = trie.child[lv][parent.clamp(min=0), code]
        alive = torch.isfinite(logp) & (parent >= 0)
        nodes = torch.where(alive, nxt, -1)
        codes = torch.cat(
            [codes.gather(1, src.unsqueeze(-1).expand(-1, -1, lv)), code.unsqueeze(-1)], dim=-1
        )
        if cache is not None:
            cache.reorder(src)
    items = torch.where(nodes >= 0, trie.leaf_item[nodes.clamp(min=0)], -1)
    return items, torch.where(nodes >= 0, logp, -torch.inf)


def value_step(
    model: GPRModel,
    h: torch.Tensor,
    emb: torch.Tensor,
    total: torch.Tensor,
    size: int,
    level: int,
    beam: int,
    guide: ValueGuide,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level of the value-guided beam: among the 2 x beam best candidates by log p (P, W·size
    in `total`), keep the `beam` best by log p + weight · log v(prefix), dropping those whose
    value is below `prune` x the request's best. Returns their log p, flat index and cumulative
    prefix embeddings (P, beam, d)."""
    assert model.hte is not None, "the value-guided beam needs HTE"
    lp2, idx2 = total.topk(min(2 * beam, total.shape[1]), dim=1)
    src2, code2 = idx2 // size, idx2 % size
    d = emb.shape[-1]
    code_emb = model.embed.codes[level](code2.clamp(0, model.level_sizes[0] - 1))
    emb2 = emb.gather(1, src2.unsqueeze(-1).expand(-1, -1, d)) + code_emb
    logv = F.logsigmoid(model.hte.prefix_value(h, emb2, level))
    score = torch.where(torch.isfinite(lp2), lp2 + guide.weight * logv, -torch.inf)
    if guide.prune > 0:
        best = torch.where(torch.isfinite(lp2), logv, -torch.inf).max(1, keepdim=True).values
        score = score.masked_fill(logv < best + math.log(guide.prune), -torch.inf)
    keep, sel = score.topk(min(beam, score.shape[1]), dim=1)
    logp = torch.where(torch.isfinite(keep), lp2.gather(1, sel), -torch.inf)
    return logp, idx2.gather(1, sel), emb2.gather(1, sel.unsqueeze(-1).expand(-1, -1, d))


def rank_candidates(
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], alpha: float, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`GPRModel.candidates` of every MTP head -> the best n by log p_SID + alpha · log p_head."""
    items = torch.cat([it for it, _, _ in parts], 1)
    scores = torch.cat([sid + alpha * head if alpha else sid for _, sid, head in parts], 1)
    return merge_ranked(items, scores, n)


def merge_ranked(
    items: torch.Tensor, scores: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: unique items keeping each one's best score, sorted best first, first n kept."""
    order = scores.argsort(dim=1, descending=True)
    items, scores = items.gather(1, order), scores.gather(1, order)
    srt, pos = items.sort(dim=1, stable=True)
    first = torch.ones_like(srt, dtype=torch.bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    dup = torch.zeros_like(first)
    dup.scatter_(1, pos, ~first)
    scores = scores.masked_fill(dup | (items < 0), -torch.inf)
    order = scores.argsort(dim=1, descending=True)[:, :n]
    items, scores = items.gather(1, order), scores.gather(1, order)
    return torch.where(torch.isfinite(scores), items, -1), scores

"""A dataset and its semantic IDs as model inputs: journeys, targets, the trie of generatable items,
the thought-token and content tables (`prepare`), and the positions a split evaluates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpr.core.config import ModelConfig
from gpr.core.errors import GprInputError
from gpr.data.schema import load_dataset
from gpr.model.journey import (
    Batch,
    I,
    Journeys,
    SidTable,
    Window,
    build_journeys,
    collate,
    next_targets,
    positions_for_split,
    prediction_mask,
    tail_windows,
)
from gpr.model.thoughts import cached_topic_table, item_topics, topic_table, window_thoughts
from gpr.model.trie import Trie
from gpr.tokenizer.embed import CACHE_DIR, MINILM_MODEL, embed_items, minilm_encoder
from gpr.tokenizer.pipeline import saved_tokenizer_input


@dataclass
class Prepared:
    journeys: Journeys
    sids: SidTable
    trie: Trie
    targets: np.ndarray
    pred_mask: np.ndarray
    engaged_only: bool  # ad world: evaluate on requests whose shown ad was clicked
    item_topic: np.ndarray | None = None  # thought tokens: topic of every item
    thought_table: torch.Tensor | None = None  # (n_topics, dim) embedded thought texts
    content_table: torch.Tensor | None = None  # (n_items, dim) item content, by item id

    def batch(
        self,
        windows: list[Window],
        splits: tuple[int, ...],
        max_len: int,
        thoughts: int,
        pred_mask: np.ndarray | None = None,
    ) -> Batch:
        """Collate windows (labels only from `splits`) and attach their thought tokens.

        `pred_mask` overrides where predictions are made (serving: exactly at given requests).
        """
        j, pm = self.journeys, self.pred_mask if pred_mask is None else pred_mask
        b = collate(j, windows, self.sids, self.targets, pm, splits, max_len)
        if thoughts > 0 and self.item_topic is not None:
            t = window_thoughts(j, windows, self.item_topic, thoughts, self.engaged_only)
            b.thought = torch.from_numpy(t)
        return b

    def at_requests(self, pos: np.ndarray, max_len: int, thoughts: int) -> Batch:
        """One prediction exactly at each position (a request's E token), the past before it as
        context; no labels attached (serving, rollouts)."""
        only = np.zeros(len(self.journeys.ttype), dtype=bool)
        only[pos] = True
        return self.batch(tail_windows(self.journeys, pos, max_len), (), max_len, thoughts, only)

    @property
    def level_sizes(self) -> list[int]:
        return list(self.trie.sizes)


def prepare(
    data_dir: str | Path,
    sids_dir: str | Path,
    mcfg: ModelConfig,
    codebook_size: int,
    thought_encoder: Callable[[list[str]], np.ndarray] | None = None,
) -> Prepared:
    """Dataset + SIDs -> journeys, targets, trie (and the thought-token table when enabled)."""
    ds = load_dataset(data_dir)
    j = build_journeys(ds)
    sids = SidTable.load(sids_dir, codebook_size)
    ids = ds.col("items", "item_id")
    if len(sids.codes) <= ids.max() or (sids.codes[ids] < 0).any():
        raise GprInputError(
            "the semantic IDs do not cover every item of the dataset",
            file=sids_dir,
            field="item_id",
        )
    targets = next_targets(j, mcfg.mtp_heads)
    pm = prediction_mask(j, targets)
    ads = np.nonzero(sids.is_target)[0]
    sizes = [sids.codebook_size] * sids.levels + [int(sids.dedup[ads].max()) + 1]
    trie = Trie(np.c_[sids.codes[ads], sids.dedup[ads]], sizes, ads)
    prep = Prepared(j, sids, trie, targets, pm, engaged_only=bool((j.ttype == 2).any()))
    if mcfg.thought_tokens > 0:
        prep.item_topic, phrases = item_topics(ds)
        if thought_encoder is not None:
            table = topic_table(phrases, thought_encoder)
        else:
            table = cached_topic_table(
                Path(data_dir) / CACHE_DIR, phrases, minilm_encoder, MINILM_MODEL
            )
        prep.thought_table = torch.from_numpy(table)
    if mcfg.content_input or mcfg.item_head:
        emb = embed_items(data_dir)
        x = emb.matrix
        if mcfg.content_source == "tokenizer":
            x = saved_tokenizer_input(data_dir, sids_dir, emb)
        table = np.zeros((len(sids.codes), x.shape[1]), dtype=np.float32)
        table[np.asarray(emb.item_ids)] = x
        prep.content_table = torch.from_numpy(table)
    return prep


def eval_positions(prep: Prepared, split: str, limit: int | None, seed: int) -> np.ndarray:
    pos = positions_for_split(prep.journeys, prep.pred_mask, split)
    if prep.engaged_only:  # the label is the ad the user engaged with (clicked)
        nxt = prep.journeys.action[np.minimum(pos + 1, len(prep.journeys.ttype) - 1)]
        pos = pos[
            (prep.journeys.ttype[np.minimum(pos + 1, len(prep.journeys.ttype) - 1)] == I)
            & (nxt >= 1)
        ]
    if limit is not None and len(pos) > limit:
        pos = np.sort(np.random.default_rng(seed).choice(pos, size=limit, replace=False))
    return pos

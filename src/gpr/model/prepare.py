"""A dataset and its semantic IDs as model inputs: journeys, targets, the trie of generatable items,
the thought-token and content tables (`prepare`), and the positions a split evaluates."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import save_file

from gpr.core.config import ModelConfig
from gpr.core.errors import GprInputError
from gpr.core.io import read_json, read_tensors, write_json, write_parquet
from gpr.core.run import CATALOGUE
from gpr.data.schema import Dataset, load_dataset
from gpr.market.ads import AD_TABLE_COLUMNS, Ads, read_ad_table
from gpr.market.policy import RequestBatch
from gpr.model.journey import (
    USER_FIELDS,
    Batch,
    E,
    I,
    SidTable,
    TokenStreams,
    Window,
    build_journeys,
    collate,
    known_user_fields,
    next_targets,
    positions_for_split,
    prediction_mask,
    tail_windows,
)
from gpr.model.thoughts import cached_topic_table, item_topics, topic_table, window_thoughts
from gpr.model.trie import Trie
from gpr.tokenizer.embed import CACHE_DIR, MINILM_MODEL, embed_items, minilm_encoder
from gpr.tokenizer.pipeline import saved_tokenizer_input

TABLES = "catalogue.safetensors"
ADS = "ads.parquet"  # the ads' targeting, flight, bid and budget (ad world), for serving
SERVING = "serving.json"  # how a request becomes tokens: user fields, engaged-only thoughts


@dataclass
class Prepared:
    journeys: TokenStreams
    sids: SidTable
    trie: Trie
    targets: np.ndarray
    pred_mask: np.ndarray
    engaged_only: bool  # ad world: evaluate on requests whose shown ad was clicked
    item_topic: np.ndarray | None = None  # thought tokens: topic of every item
    thought_table: torch.Tensor | None = None  # (n_topics, dim) embedded thought texts
    content_table: torch.Tensor | None = None  # (n_items, dim) item content, by item id
    catalogue: Catalogue | None = None  # what the fields above came from (saved with a run)
    _pos_of: np.ndarray | None = field(default=None, init=False, repr=False)
    _trie_col: tuple[Ads, np.ndarray] | None = field(default=None, init=False, repr=False)

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

    def positions(self, request_ids: np.ndarray) -> np.ndarray:
        """The E-token position in `journeys` of each request."""
        if self._pos_of is None:
            j = self.journeys
            e_rows = np.nonzero((j.ttype == E) & (j.request >= 0))[0]
            self._pos_of = np.full(int(j.request.max()) + 1, -1, dtype=np.int64)
            self._pos_of[j.request[e_rows]] = e_rows
        ids = np.asarray(request_ids, dtype=np.int64)
        ok = (ids >= 0) & (ids < len(self._pos_of))
        pos = np.where(ok, self._pos_of[np.where(ok, ids, 0)], -1)
        if (pos < 0).any():
            bad = int(ids[np.argmax(pos < 0)])
            raise GprInputError(f"unknown request id {bad}", field="request_id")
        return pos

    def at_batch(self, batch: RequestBatch, max_len: int, thoughts: int) -> Batch:
        """One prediction at each request of `batch`, in the batch's environment (ARR)."""
        b = self.at_requests(self.positions(batch.request_ids), max_len, thoughts)
        cur = b.field[b.pred_b, b.pred_t]
        env = torch.from_numpy(batch.env)
        b.field[b.pred_b, b.pred_t] = torch.where(env >= 0, env, cur)
        return b

    def trie_eligible(self, batch: RequestBatch) -> torch.Tensor:
        """(B, trie items) bool: the batch's eligibility over ads in the trie's column order."""
        if self._trie_col is None or self._trie_col[0] is not batch.ads:
            self._trie_col = (batch.ads, batch.ads.index_of(self.trie.items.numpy()))
        cols = self._trie_col[1]
        ok = cols >= 0
        return torch.from_numpy(
            np.where(ok[None, :], batch.eligible[:, np.maximum(cols, 0)], False)
        )

    @property
    def level_sizes(self) -> list[int]:
        return list(self.trie.sizes)


@dataclass
class Catalogue:
    """What a model needs of the item catalogue, saved in its run (RUN/catalogue/): the semantic
    IDs, the trie of generatable items, and the thought-token and content tables when enabled."""

    sids: SidTable
    trie: Trie
    sids_dir: Path  # where sids.parquet and tokenizer.json are
    item_topic: np.ndarray | None = None  # thought tokens: topic of every item
    thought_table: torch.Tensor | None = None  # (n_topics, dim) embedded thought texts
    content_table: torch.Tensor | None = None  # (n_items, dim) item content, by item id
    ads: pa.Table | None = None  # the ad world's ads at training time (targeting, bid, budget)
    user_fields: tuple[str, ...] = USER_FIELDS  # one U token each (the fields the data knows)
    engaged_only: bool = False  # ad world: thought tokens count clicked ads only

    @property
    def level_sizes(self) -> list[int]:
        return list(self.trie.sizes)

    @classmethod
    def build(
        cls,
        ds: Dataset,
        sids_dir: str | Path,
        mcfg: ModelConfig,
        codebook_size: int | None = None,
        thought_encoder: Callable[[list[str]], np.ndarray] | None = None,
    ) -> Catalogue:
        """From a dataset and its SIDs (training): embeds what the model's inputs need."""
        sids_dir = Path(sids_dir)
        sids = SidTable.load(sids_dir, codebook_size)
        check_covers(sids, ds, sids_dir)
        cat = cls(sids, _trie(sids), sids_dir)
        kind = ds.col("items", "kind").astype(str)
        if (kind == "ad").any() and np.isfinite(ds.col("items", "bid")[kind == "ad"]).all():
            rows = np.nonzero(kind == "ad")[0]
            cat.ads = ds.items.select(list(AD_TABLE_COLUMNS)).take(pa.array(rows))
        cat.user_fields = tuple(known_user_fields(ds))
        cat.engaged_only = bool((ds.col("events", "token_type").astype(str) == "E").any())
        if mcfg.thought_tokens > 0:
            cat.item_topic, phrases = item_topics(ds)
            if thought_encoder is not None:
                table = topic_table(phrases, thought_encoder)
            else:
                table = cached_topic_table(
                    ds.root / CACHE_DIR, phrases, minilm_encoder, MINILM_MODEL
                )
            cat.thought_table = torch.from_numpy(table)
        if mcfg.content_input or mcfg.item_head:
            emb = embed_items(ds.root)
            x = emb.matrix
            if mcfg.content_source == "tokenizer":
                x = saved_tokenizer_input(ds.root, sids_dir, emb)
            table = np.zeros((len(sids.codes), x.shape[1]), dtype=np.float32)
            table[np.asarray(emb.item_ids)] = x
            cat.content_table = torch.from_numpy(table)
        return cat

    def save(self, run_dir: Path) -> None:
        """Write RUN/catalogue/: the tokenizer's files (SIDs, its config and weights) and
        catalogue.safetensors."""
        out = run_dir / CATALOGUE
        out.mkdir(parents=True, exist_ok=True)
        for f in self.sids_dir.iterdir():
            if f.is_file() and f.name not in (TABLES, ADS, SERVING):
                shutil.copy2(f, out / f.name)
        if self.ads is not None:
            write_parquet(out / ADS, self.ads)
        write_json(
            out / SERVING,
            {"user_fields": list(self.user_fields), "engaged_only": self.engaged_only},
        )
        tensors = {
            k: v
            for k, v in (
                (
                    "item_topic",
                    None if self.item_topic is None else torch.from_numpy(self.item_topic),
                ),
                ("thought_table", self.thought_table),
                ("content_table", self.content_table),
            )
            if v is not None
        }
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / TABLES))

    @classmethod
    def load(cls, path: Path) -> Catalogue:
        """RUN/catalogue/ as saved; reads no dataset."""
        sids = SidTable.load(path)
        t = read_tensors(path / TABLES)
        topic = t.get("item_topic")
        cat = cls(
            sids,
            _trie(sids),
            path,
            None if topic is None else topic.numpy(),
            t.get("thought_table"),
            t.get("content_table"),
        )
        if (path / ADS).is_file():
            cat.ads = read_ad_table(path / ADS)
        if (path / SERVING).is_file():
            meta = read_json(path / SERVING)
            fields = meta.get("user_fields")
            if not isinstance(fields, list) or not set(fields) <= set(USER_FIELDS):
                raise GprInputError(
                    f"a list of fields of {USER_FIELDS}", file=path / SERVING, field="user_fields"
                )
            cat.user_fields = tuple(f for f in USER_FIELDS if f in fields)
            cat.engaged_only = bool(meta.get("engaged_only", False))
        return cat


def _trie(sids: SidTable) -> Trie:
    ads = np.nonzero(sids.is_target)[0]
    sizes = [sids.codebook_size] * sids.levels + [int(sids.dedup[ads].max()) + 1]
    return Trie(np.c_[sids.codes[ads], sids.dedup[ads]], sizes, ads)


def check_covers(sids: SidTable, ds: Dataset, sids_dir: Path) -> None:
    ids = ds.col("items", "item_id")
    if len(sids.codes) <= ids.max() or (sids.codes[ids] < 0).any():
        raise GprInputError(
            "the semantic IDs do not cover every item of the dataset",
            file=sids_dir,
            field="item_id",
        )


def with_journeys(cat: Catalogue, ds: Dataset, mcfg: ModelConfig) -> Prepared:
    """A catalogue and a dataset's journeys -> targets and prediction positions."""
    check_covers(cat.sids, ds, cat.sids_dir)
    j = build_journeys(ds)
    targets = next_targets(j, mcfg.mtp_heads)
    pm = prediction_mask(j, targets)
    return Prepared(
        j,
        cat.sids,
        cat.trie,
        targets,
        pm,
        engaged_only=bool((j.ttype == E).any()),
        item_topic=cat.item_topic,
        thought_table=cat.thought_table,
        content_table=cat.content_table,
        catalogue=cat,
    )


def prepare(
    data_dir: str | Path,
    sids_dir: str | Path,
    mcfg: ModelConfig,
    codebook_size: int | None = None,
    thought_encoder: Callable[[list[str]], np.ndarray] | None = None,
) -> Prepared:
    """Dataset + SIDs -> the model inputs (with the catalogue a run saves)."""
    ds = load_dataset(data_dir)
    return with_journeys(
        Catalogue.build(ds, sids_dir, mcfg, codebook_size, thought_encoder), ds, mcfg
    )


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

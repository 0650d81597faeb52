"""The live eligible-ad catalogue (spec §5): a growable semantic-ID trie whose per-request legal
codes follow targeting, flight days, pause and budget without building a trie per request.

Data structure (D levels; level l has `size_l` codes; the last level is the de-dup index):

- Trie (serve.live_trie): `child[l]` (cap_l, size_l) int64 node ids at depth l+1 or -1, with
  spare rows (doubled when full, so adding an ad is amortised O(D)). The leaf of the ad in column
  (slot) j is j itself, so `leaf_item == items`. Ads are never removed from the trie (pausing or
  exhausting one only makes it ineligible), so an entry only ever goes from -1 to a node id.
- Per ad (by slot, in insertion order = the column order of `items`, `paths` and `mask`): item
  id, path, targeting (age and region bitmasks, gender -1 for all), flight (created_day <= day <
  end_day), bid, budget, spend, paused, and `live` = not paused, spend < budget, in flight today.
- Segments (serve.segments): a user's (age band, gender, region) is one of S segments (60 in the
  ad world). For every depth l = 0..D-1, `counts[l]` (cap_l, S) holds the number of live leaves
  under each node that target that segment. Every change of an ad's `live` adds +-1 along its
  path for each segment it targets (O(D·S)); `set_day` does it for the ads whose flight starts or
  ends (an O(A) scan).
- A request is its users' segments (`Eligibility`). `legal(level, nodes, elig, rows)`: a child at
  depth < D is legal when its count for the row's segment is > 0; a leaf (depth D) is checked
  directly against the ad's state (live, and its targeting admits the user). So every path the
  decoder can complete ends at an ad eligible for that request, and every eligible ad is
  reachable: the rule of market.ads.eligible_mask, plus pause.

Memory, in bytes (n_l nodes at depth l, n_0 = 1; A ads; S segments):
    child tables  sum_{l<D} n_l * size_l * 8
    counts        sum_{l<D} n_l * S * b_l     (b_l = 2 when a depth-l node can hold < 2^15 leaves,
                                               i.e. prod(size_l..size_{D-1}) < 2^15, else 4 or 8;
                                               the A leaves have no per-segment counts)
    per ad        A * (8 * D + 59)            (item 8, path 8D, targeting 9, days 16, money 24,
                                               flags 2)
    id lookup     8 * (largest item id + 1), at most 8 * (4 * A + 2^20); larger ids go in a dict
up to 2x that for spare capacity after incremental growth (a bulk build allocates exactly). With
1M ads, K = 256, L = 3 and 8 de-dup slots: about 190 MiB of tables, 120 MiB of counts, 90 MiB of
ad state.

Thread safety: one `threading.Lock` serialises every update and every read of the counts and of
the per-ad state (`legal`, `mask`, `eligibility`, `eligible_items`, `eligible_counts`, `get`,
`to_trie`), so each call sees one consistent version. Decoders index `child` without the lock,
which is safe: entries only go from -1 to a node that was complete before the lock was released,
and a grown table replaces the old one, which still holds every node it knew. An update between
two levels of one decode can at worst turn a branch into a dead end (fewer candidates); the leaf
check at the last level reads the state of that moment, so a returned ad was eligible when it was
chosen. `Eligibility.version` against `version` tells a caller that an update happened meanwhile.
The state lives on the CPU; `legal` accepts node tensors on any device and answers on theirs.

Plugs into the existing decoders by duck typing: pass the catalogue as `trie` and an
`Eligibility` as `counts` (model.gpr.beam_search, policy.rollout), or `mask()` as `eligible` to
`GPRModel.generate(b, cat, beam, eligible)` (then `eligible_counts` makes the stock counts), or
`to_trie()` for a static model.trie.Trie copy (e.g. to move to a GPU).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from gpr.core.errors import GprInputError
from gpr.core.run import Run
from gpr.market.ads import Ads, Users
from gpr.model.journey import SidTable
from gpr.model.trie import Trie
from gpr.serve.live_trie import LiveTrie
from gpr.serve.segments import SegmentSpace
from gpr.tokenizer.dedup import dedup_index
from gpr.tokenizer.methods import Tokenizer, load_tokenizer

CHUNK = 1 << 16  # ads per bulk count update (bounds the (n, S) membership temporary)
MAX_ITEM_ID = 1 << 40


class Eligibility:
    """One request batch: the segment of each row (user), made by `LiveCatalogue.eligibility`."""

    def __init__(self, segments: ArrayLike, space: SegmentSpace, version: int, day: int) -> None:
        seg = np.asarray(segments, dtype=np.int64).reshape(-1)
        age, gender, region = space.split(seg)
        self.seg_np, self.age_np, self.gender_np, self.region_np = seg, age, gender, region
        self.segments = torch.from_numpy(seg)
        self.version = version  # the catalogue's version when this was made
        self.day = day

    def __len__(self) -> int:
        return len(self.segments)


def _as_1d(v: Any, n: int, dtype: Any, name: str) -> np.ndarray:
    a = np.asarray(v)
    if a.ndim == 0:
        a = np.full(n, a)
    if a.shape != (n,):
        raise GprInputError(f"expected {n} values, got shape {a.shape}", field=name)
    exact = np.issubdtype(a.dtype, np.integer) or a.dtype == bool
    whole = np.issubdtype(a.dtype, np.floating) and bool((a == np.round(a)).all())
    if np.issubdtype(np.dtype(dtype), np.integer) and not (exact or whole):
        raise GprInputError(f"must be integers, got {a.dtype}", field=name)
    return a.astype(dtype)


def _check_money(v: np.ndarray, name: str, positive: bool) -> None:
    bad = ~np.isfinite(v) | ((v <= 0) if positive else (v < 0))
    if bad.any():
        i = int(np.argmax(bad))
        what = "a finite number > 0" if positive else "a finite number >= 0"
        raise GprInputError(f"{float(v[i])} is not {what}", row=i, field=name)


class LiveCatalogue:
    """The live ads and their growable trie; see the module docstring."""

    _AD_FIELDS = (
        "_item",
        "_path",
        "_ages",
        "_regions",
        "_gender",
        "_created",
        "_end",
        "_bid",
        "_budget",
        "_spent",
        "_paused",
        "_live",
    )

    def __init__(
        self,
        sizes: Sequence[int],
        space: SegmentSpace | None = None,
        *,
        day: int = 0,
        tokenizer: Tokenizer | str | Path | None = None,
        capacity: int = 16,
    ) -> None:
        """An empty catalogue: `sizes` codes per level (the last: de-dup indices), `space` the
        targeting segments (default: the ad world's), `tokenizer` (or its directory, loaded on
        first use) for ads added by embedding."""
        self.space = space or SegmentSpace.infer()
        self._trie = LiveTrie(sizes, self.space.n)
        self._day = int(day)
        self._tok: Tokenizer | None = tokenizer if isinstance(tokenizer, Tokenizer) else None
        self._tok_dir = None if isinstance(tokenizer, Tokenizer) else tokenizer
        self._lock = threading.Lock()
        self._version = 0
        self._n_ads = 0
        self._item = np.zeros(capacity, dtype=np.int64)
        self._path = np.zeros((capacity, self.depth), dtype=np.int64)
        self._ages = np.zeros(capacity, dtype=np.int32)
        self._regions = np.zeros(capacity, dtype=np.int32)
        self._gender = np.zeros(capacity, dtype=np.int8)
        self._created = np.zeros(capacity, dtype=np.int64)
        self._end = np.zeros(capacity, dtype=np.int64)
        self._bid = np.zeros(capacity, dtype=np.float64)
        self._budget = np.zeros(capacity, dtype=np.float64)
        self._spent = np.zeros(capacity, dtype=np.float64)
        self._paused = np.zeros(capacity, dtype=bool)
        self._live = np.zeros(capacity, dtype=bool)
        self._col = np.full(capacity, -1, dtype=np.int64)  # item id -> slot (dense ids)
        self._far: dict[int, int] = {}  # ids too large for `_col` (kept small: see _index)

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_ads(
        cls,
        sizes: Sequence[int],
        paths: np.ndarray,
        ads: Ads,
        *,
        day: int,
        spend: np.ndarray | None = None,
        paused: np.ndarray | None = None,
        space: SegmentSpace | None = None,
        users: Users | None = None,
        tokenizer: Tokenizer | str | Path | None = None,
    ) -> LiveCatalogue:
        """From arrays: `paths` (A, D) of the ads of `ads` in its order, `spend` (A,) so far."""
        cat = cls(
            sizes,
            space or SegmentSpace.infer(ads, users),
            day=day,
            tokenizer=tokenizer,
            capacity=max(ads.n, 1),
        )
        cat.add_ads(
            ads.item_id,
            paths,
            target_ages=ads.target_ages,
            target_regions=ads.target_regions,
            target_gender=ads.target_gender,
            created_day=ads.created_day,
            end_day=ads.end_day,
            bid=ads.bid,
            budget=ads.budget,
            spend=spend,
            paused=paused,
        )
        return cat

    @classmethod
    def from_run(
        cls,
        run: Run | str | Path,
        ads: Ads,
        *,
        day: int,
        spend: np.ndarray | None = None,
        paused: np.ndarray | None = None,
        users: Users | None = None,
        space: SegmentSpace | None = None,
    ) -> LiveCatalogue:
        """From a run's catalogue (its SIDs, sizes as the model's, and its saved tokenizer for
        later ads) and the ads' attributes; reads no training data."""
        path = (run if isinstance(run, Run) else Run.load(run)).catalogue
        sids = SidTable.load(path)
        ids = ads.item_id
        known = (ids >= 0) & (ids < len(sids.codes))
        known[known] &= (sids.codes[ids[known]] >= 0).all(axis=1)
        if not known.all():
            i = int(np.argmin(known))
            raise GprInputError(
                f"ad {ids[i]} has no semantic ID in the run (add it with add_ad(embedding=...))",
                file=path,
                row=i,
                field="item_id",
            )
        targets = np.nonzero(sids.is_target)[0]
        sizes = [sids.codebook_size] * sids.levels + [int(sids.dedup[targets].max()) + 1]
        paths = np.c_[sids.codes[ids], sids.dedup[ids]]
        return cls.from_ads(
            sizes,
            paths,
            ads,
            day=day,
            spend=spend,
            paused=paused,
            space=space,
            users=users,
            tokenizer=path,
        )

    # --- the Trie interface (model.trie.Trie) ---------------------------------------------------
    @property
    def depth(self) -> int:
        return self._trie.depth

    @property
    def sizes(self) -> list[int]:
        return list(self._trie.sizes)

    @property
    def child(self) -> list[torch.Tensor]:
        """Per level l the (cap_l, size_l) child table (spare rows hold -1)."""
        return list(self._trie.child)

    @property
    def items(self) -> torch.Tensor:
        """(A,) item id per column."""
        return torch.from_numpy(self._item[: self._n_ads])

    @property
    def leaf_item(self) -> torch.Tensor:
        return self.items

    @property
    def paths(self) -> torch.Tensor:
        """(A, D) path per column."""
        return torch.from_numpy(self._path[: self._n_ads])

    @property
    def version(self) -> int:
        return self._version

    @property
    def day(self) -> int:
        return self._day

    def __len__(self) -> int:
        return self._n_ads

    def column(self, items: torch.Tensor) -> torch.Tensor:
        """Item ids (any shape) -> their column in `items`, -1 for ids that are not ads here."""
        with self._lock:
            out = self._lookup(items.cpu().numpy().astype(np.int64))
        return torch.from_numpy(out).to(items.device)

    def parents(self, paths: torch.Tensor) -> torch.Tensor:
        """(N, D) paths -> (N, D) node before each level (-1 once the path leaves the trie)."""
        nodes = self._trie.nodes(paths.cpu().numpy().astype(np.int64))
        return torch.from_numpy(nodes[:, :-1].copy()).to(paths.device)

    def walk(self, paths: torch.Tensor) -> torch.Tensor:
        """(N, D) full paths -> (N,) leaf (= column; -1 where a path leaves the trie)."""
        nodes = self._trie.nodes(paths.cpu().numpy().astype(np.int64))
        return torch.from_numpy(nodes[:, -1].copy()).to(paths.device)

    def eligible_counts(self, eligible: torch.Tensor) -> list[torch.Tensor]:
        """(B, A) bool over `items` -> the stock counts: per level l the (B, n_{l+1}) count of
        eligible leaves under each child (the last level: the mask itself)."""
        e = eligible.cpu().float()
        with self._lock:
            if e.ndim != 2 or e.shape[1] != self._n_ads:
                raise GprInputError(
                    f"eligible has shape {tuple(e.shape)}, expected (B, {self._n_ads})",
                    field="eligible",
                )
            nodes = self._trie.nodes(self._path[: self._n_ads])
            out = []
            for lv in range(1, self.depth):
                n, node = self._trie.n_nodes[lv], torch.from_numpy(nodes[:, lv])
                out.append(torch.zeros(e.shape[0], n).index_add_(1, node, e))
        out.append(e)
        return out

    def legal(
        self,
        level: int,
        nodes: torch.Tensor,
        counts: Eligibility | list[torch.Tensor] | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N,) parent nodes at `level` -> (N, size) codes that continue a path to an ad that is
        eligible now for the row's request (`rows` (N,) indexes `counts`): with an Eligibility,
        from the live counts and state; with `eligible_counts`' list, as model.trie.Trie does."""
        with self._lock:
            return self._legal(level, nodes.cpu(), counts, rows).to(nodes.device)

    def _legal(
        self,
        level: int,
        nodes: torch.Tensor,
        counts: Eligibility | list[torch.Tensor] | None,
        rows: torch.Tensor | None,
    ) -> torch.Tensor:
        nd = nodes.numpy()
        ch = self._trie.child_np[level][np.maximum(nd, 0)]
        ok = (ch >= 0) & (nd >= 0)[:, None]
        if counts is None:
            return torch.from_numpy(ok)
        assert rows is not None
        r = rows.cpu().numpy()[:, None]
        c = np.maximum(ch, 0)
        if isinstance(counts, Eligibility):
            if level < self.depth - 1:
                ok &= self._trie.has_live(level, c, counts.seg_np[r])
            else:
                ok &= self._leaf_ok(c, counts, r)
            return torch.from_numpy(ok)
        table = counts[level].cpu()  # made before later adds: their nodes count 0
        if table.shape[1] == 0:
            return torch.zeros(ok.shape, dtype=torch.bool)
        inside = torch.from_numpy(ok & (c < table.shape[1]))
        cc = torch.from_numpy(np.minimum(c, table.shape[1] - 1))
        return inside & (table[torch.from_numpy(r), cc] > 0)

    def _leaf_ok(self, slots: np.ndarray, elig: Eligibility, r: np.ndarray) -> np.ndarray:
        """Leaves (any shape) are eligible for rows `r` (broadcast): live and targeted."""
        gender = self._gender[slots]
        return (
            self._live[slots]
            & (((self._ages[slots] >> elig.age_np[r]) & 1) == 1)
            & (((self._regions[slots] >> elig.region_np[r]) & 1) == 1)
            & ((gender < 0) | (gender == elig.gender_np[r]))
        )

    def bids(self, items: torch.Tensor) -> torch.Tensor:
        """The current bid of each ad item id (any shape; 0 for -1 and unknown ids)."""
        col = self.column(items)
        with self._lock:
            bid = torch.from_numpy(self._bid[: max(self._n_ads, 1)].astype(np.float32))
        return torch.where(col >= 0, bid[col.clamp(min=0)], 0.0)

    def to_trie(self) -> Trie:
        """A static model.trie.Trie of the current ads (same column order), e.g. for a GPU."""
        with self._lock:
            a = self._n_ads
            return Trie(self._path[:a].copy(), self.sizes, self._item[:a].copy())

    # --- per-request eligibility ----------------------------------------------------------------
    def eligibility(
        self,
        segments: ArrayLike | None = None,
        *,
        users: Users | None = None,
        user_ids: ArrayLike | None = None,
    ) -> Eligibility:
        """The `counts` argument of `legal` for a batch: segment ids, or users + their ids."""
        if segments is None:
            if users is None or user_ids is None:
                raise GprInputError("give segments, or users and user_ids", field="segments")
            segments = self.space.of_users(users, user_ids)
        with self._lock:
            return Eligibility(segments, self.space, self._version, self._day)

    def mask(self, users: Users, user_ids: ArrayLike) -> torch.Tensor:
        """(B, A) bool over `items`: the ad may serve the user now (GPRModel.generate's
        `eligible`)."""
        return self.mask_segments(self.space.of_users(users, user_ids))

    def mask_segments(self, segments: ArrayLike) -> torch.Tensor:
        seg = np.asarray(segments, dtype=np.int64).reshape(-1)
        uniq, inv = np.unique(seg, return_inverse=True)
        with self._lock:  # one row per distinct segment, then copied to its requests
            e = Eligibility(uniq, self.space, self._version, self._day)
            slots = np.arange(self._n_ads)[None, :]
            return torch.from_numpy(self._leaf_ok(slots, e, np.arange(len(uniq))[:, None])[inv])

    def eligible_count(self, segment: int) -> int:
        """How many ads may serve a user of `segment` now (the root's count)."""
        self.space.split(np.asarray([segment]))
        with self._lock:
            return int(self._trie.counts[0][0, segment])

    def eligible_items(self, segment: int) -> np.ndarray:
        """Item ids reachable under `legal` for a user of `segment` (the whole trie walked with
        the live counts), in column order."""
        with self._lock:
            e = Eligibility(np.asarray([segment]), self.space, self._version, self._day)
            nodes = torch.zeros(1, dtype=torch.long)
            for lv in range(self.depth):
                ok = self._legal(lv, nodes, e, torch.zeros(len(nodes), dtype=torch.long))
                i, code = torch.nonzero(ok, as_tuple=True)
                nodes = self._trie.child[lv][nodes[i], code]
            return self._item[np.sort(nodes.numpy())].copy()

    # --- updates --------------------------------------------------------------------------------
    def add_ad(
        self,
        item_id: int,
        *,
        path: Sequence[int] | np.ndarray | None = None,
        embedding: np.ndarray | None = None,
        target_ages: int,
        target_regions: int,
        target_gender: int,
        created_day: int,
        end_day: int,
        bid: float,
        budget: float,
        spend: float = 0.0,
        paused: bool = False,
    ) -> np.ndarray:
        """Add one ad with its full `path`, or its `embedding` (the tokenizer's input): then the
        codes come from the saved tokenizer and the de-dup index is the lowest free one under
        that prefix (GprInputError 'dedup' when the level is full). Returns its path (D,)."""
        if (path is None) == (embedding is None):
            raise GprInputError("give exactly one of path and embedding", field="path")
        codes = None
        if embedding is not None:
            x = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
            codes = self.tokenizer.encode(x)[0].astype(np.int64)
            if len(codes) != self.depth - 1:
                raise GprInputError(
                    f"the tokenizer gives {len(codes)} levels, the trie has {self.depth - 1} "
                    "before the de-dup level",
                    field="embedding",
                )
        args = dict(
            target_ages=target_ages,
            target_regions=target_regions,
            target_gender=target_gender,
            created_day=created_day,
            end_day=end_day,
            bid=bid,
            budget=budget,
            spend=spend,
            paused=paused,
        )
        with self._lock:
            if codes is not None:
                path = np.r_[codes, self._trie.free_dedup(codes)]
            p = np.asarray(path).reshape(1, -1)  # checked by _add (integers, range)
            self._add(np.asarray([item_id]), p, args)
            return self._path[self._n_ads - 1].copy()

    def add_ads(
        self,
        item_ids: ArrayLike,
        paths: ArrayLike,
        *,
        target_ages: ArrayLike,
        target_regions: ArrayLike,
        target_gender: ArrayLike,
        created_day: ArrayLike,
        end_day: ArrayLike,
        bid: ArrayLike,
        budget: ArrayLike,
        spend: ArrayLike | None = None,
        paused: ArrayLike | None = None,
    ) -> None:
        """Add many ads at once (vectorised; all or none): `paths` (n, D)."""
        args = dict(
            target_ages=target_ages,
            target_regions=target_regions,
            target_gender=target_gender,
            created_day=created_day,
            end_day=end_day,
            bid=bid,
            budget=budget,
            spend=0.0 if spend is None else spend,
            paused=False if paused is None else paused,
        )
        with self._lock:
            self._add(np.asarray(item_ids), np.asarray(paths), args)

    def pause(self, item_id: int) -> None:
        self._update(item_id, "_paused", True)

    def resume(self, item_id: int) -> None:
        self._update(item_id, "_paused", False)

    def set_budget(self, item_id: int, budget: float) -> None:
        _check_money(np.asarray([budget], dtype=np.float64), "budget", positive=False)
        self._update(item_id, "_budget", float(budget))

    def spend(self, item_id: int, amount: float) -> None:
        """Record spend; the ad is exhausted (ineligible) once spend >= budget."""
        _check_money(np.asarray([amount], dtype=np.float64), "amount", positive=False)
        with self._lock:
            s = self._slot(item_id)
            self._spent[s] += float(amount)
            self._sync(np.asarray([s]))
            self._version += 1

    def set_day(self, day: int) -> None:
        """Move to `day`: ads whose flight starts or ends change eligibility (O(A) check)."""
        if isinstance(day, bool) or not isinstance(day, int | np.integer):
            raise GprInputError(f"day must be an integer, got {day!r}", field="day")
        with self._lock:
            self._day = int(day)
            self._sync(np.arange(self._n_ads))
            self._version += 1

    def get(self, item_id: int) -> dict[str, Any]:
        """The state of one ad."""
        with self._lock:
            s = self._slot(item_id)
            return {
                "item_id": int(self._item[s]),
                "column": s,
                "path": [int(c) for c in self._path[s]],
                "target_ages": int(self._ages[s]),
                "target_regions": int(self._regions[s]),
                "target_gender": int(self._gender[s]),
                "created_day": int(self._created[s]),
                "end_day": int(self._end[s]),
                "bid": float(self._bid[s]),
                "budget": float(self._budget[s]),
                "spend": float(self._spent[s]),
                "paused": bool(self._paused[s]),
                "exhausted": bool(self._spent[s] >= self._budget[s]),
                "in_flight": bool(self._created[s] <= self._day < self._end[s]),
                "live": bool(self._live[s]),
            }

    @property
    def tokenizer(self) -> Tokenizer:
        """The saved tokenizer that assigns codes to ads added by embedding."""
        if self._tok is None:
            if self._tok_dir is None:
                raise GprInputError("this catalogue has no tokenizer", field="embedding")
            self._tok = load_tokenizer(self._tok_dir)
        return self._tok

    # --- internals (the caller holds the lock) --------------------------------------------------
    def _slot(self, item_id: int) -> int:
        try:
            s = int(self._lookup(np.asarray([int(item_id)]))[0])
        except (TypeError, ValueError, OverflowError):
            s = -1
        if s < 0:
            raise GprInputError(f"unknown ad {item_id}", field="item_id")
        return s

    def _update(self, item_id: int, field: str, value: Any) -> None:
        with self._lock:
            s = self._slot(item_id)
            getattr(self, field)[s] = value
            self._sync(np.asarray([s]))
            self._version += 1

    def _sync(self, slots: np.ndarray) -> None:
        """Recompute `live` of `slots` and move the counts of those that changed."""
        d = self._day
        new = (
            ~self._paused[slots]
            & (self._spent[slots] < self._budget[slots])
            & (self._created[slots] <= d)
            & (d < self._end[slots])
        )
        old = self._live[slots]
        off, on = slots[old & ~new], slots[new & ~old]
        self._live[off] = False  # the leaf check first, so it never admits more than the counts
        self._apply(off, -1)
        self._apply(on, 1)
        self._live[on] = True

    def _apply(self, slots: np.ndarray, delta: int) -> None:
        """Add `delta` to the counts along each slot's path for every segment it targets."""
        for start in range(0, len(slots), CHUNK):
            s = slots[start : start + CHUNK]
            m = self.space.members(self._ages[s], self._gender[s], self._regions[s])
            member = torch.from_numpy(m.astype(np.int16) * np.int16(delta))
            self._trie.add_counts(self._path[s], member)

    def _lookup(self, ids: np.ndarray) -> np.ndarray:
        """Item ids (any shape) -> slot, -1 for unknown ids."""
        inside = (ids >= 0) & (ids < len(self._col))
        out = np.where(inside, self._col[np.where(inside, ids, 0)], -1)
        if self._far:
            far = np.flatnonzero(~inside.reshape(-1))
            flat = out.reshape(-1)
            flat[far] = [self._far.get(int(i), -1) for i in ids.reshape(-1)[far]]
        return out

    def _index(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Record id -> slot: in the dense array while it stays within 4x the ads' capacity (plus
        2^20), else in a dict, so one huge id cannot allocate gigabytes."""
        limit = 4 * len(self._item) + (1 << 20)
        top = int(ids.max(initial=-1)) + 1
        if len(self._col) < top:
            want = min(max(top, 2 * len(self._col)), limit)
            if want > len(self._col):
                grown = np.full(want, -1, dtype=np.int64)
                grown[: len(self._col)] = self._col
                self._col = grown
        dense = ids < len(self._col)
        self._col[ids[dense]] = slots[dense]
        self._far.update(zip(ids[~dense].tolist(), slots[~dense].tolist(), strict=True))

    def _add(self, ids: np.ndarray, paths: np.ndarray, args: dict[str, Any]) -> None:
        n, d = len(ids), self.depth
        ids = _as_1d(ids, n, np.int64, "item_id")
        if paths.ndim != 2 or paths.shape != (n, d):
            raise GprInputError(f"paths must be ({n}, {d}), got {paths.shape}", field="path")
        paths = _as_1d(paths.reshape(-1), n * d, np.int64, "path").reshape(n, d)
        st = {
            "_ages": _as_1d(args["target_ages"], n, np.int64, "target_ages"),
            "_regions": _as_1d(args["target_regions"], n, np.int64, "target_regions"),
            "_gender": _as_1d(args["target_gender"], n, np.int64, "target_gender"),
            "_created": _as_1d(args["created_day"], n, np.int64, "created_day"),
            "_end": _as_1d(args["end_day"], n, np.int64, "end_day"),
            "_bid": _as_1d(args["bid"], n, np.float64, "bid"),
            "_budget": _as_1d(args["budget"], n, np.float64, "budget"),
            "_spent": _as_1d(args["spend"], n, np.float64, "spend"),
            "_paused": _as_1d(args["paused"], n, bool, "paused"),
        }
        self._validate(ids, paths, st)
        a = self._n_ads
        self._grow_ads(a + n)
        self._trie.insert(paths, a)
        slots = np.arange(a, a + n)
        self._item[slots] = ids
        self._path[slots] = paths
        for k, v in st.items():
            getattr(self, k)[slots] = v
        self._live[slots] = False
        self._index(ids, slots)
        self._n_ads = a + n
        self._sync(slots)
        self._version += 1

    def _validate(self, ids: np.ndarray, paths: np.ndarray, st: dict[str, np.ndarray]) -> None:
        n = len(ids)
        bad = (ids < 0) | (ids >= MAX_ITEM_ID)
        if bad.any():
            i = int(np.argmax(bad))
            raise GprInputError(f"item id {ids[i]} outside [0, 2^40)", row=i, field="item_id")
        known = self._lookup(ids) >= 0
        if known.any():
            i = int(np.argmax(known))
            raise GprInputError(f"ad {ids[i]} is already in the catalogue", row=i, field="item_id")
        _, first = np.unique(ids, return_index=True)
        if len(first) != n:
            dup = np.ones(n, dtype=bool)
            dup[first] = False
            i = int(np.argmax(dup))
            raise GprInputError(f"duplicate item id {ids[i]}", row=i, field="item_id")
        bad = (paths < 0) | (paths >= np.asarray(self.sizes)[None, :])
        if bad.any():
            i = int(np.argmax(bad.any(axis=1)))
            raise GprInputError(
                f"path {paths[i].tolist()} has a code outside its level (sizes {self.sizes})",
                row=i,
                field="path",
            )
        taken = self._trie.nodes(paths)[:, -1] >= 0
        if n > 1:
            taken |= dedup_index(paths) > 0  # the second and later ads on one path
        if taken.any():
            i = int(np.argmax(taken))
            raise GprInputError(
                f"path {paths[i].tolist()} is already taken by another ad", row=i, field="path"
            )
        self.space.check_targeting(st["_ages"], st["_gender"], st["_regions"])
        bad = st["_end"] < st["_created"]
        if bad.any():
            raise GprInputError(
                "the ad ends before it starts", row=int(np.argmax(bad)), field="end_day"
            )
        _check_money(st["_bid"], "bid", positive=True)
        _check_money(st["_budget"], "budget", positive=False)
        _check_money(st["_spent"], "spend", positive=False)

    def _grow_ads(self, needed: int) -> None:
        cap = len(self._item)
        if needed <= cap:
            return
        new_cap = max(needed, 2 * cap)
        for name in self._AD_FIELDS:
            old = getattr(self, name)
            new = np.zeros((new_cap, *old.shape[1:]), dtype=old.dtype)
            new[:cap] = old
            setattr(self, name, new)

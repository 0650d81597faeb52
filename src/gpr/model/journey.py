"""Journeys as model tokens (spec §1.2): U/O/E/I streams per user, windows, batches and targets.

`TokenStreams` is the model's view of the events: the same rows as the log index
`market.journeys.Journeys`, with each user's U tokens rebuilt from users.parquet and the E fields
packed for the embedding.

Token fields, per position:
- ttype: 0 U, 1 O, 2 E, 3 I, -1 padding.
- codes (L,): semantic-ID path of the O/I item (pad = codebook_size elsewhere).
- field (4,): E -> scene, slot, device, hour; U -> feature group, value; else 0.
- action: the I token's outcome (0 impression, 1 click, 2 conversion); else 0.
- ts: the event's timestamp in seconds (0 on U tokens); read only by HSD's time bias.

Prediction positions: an E token whose request showed an ad (the ad world), or every I token that
has a later I token (public data). Head j's target is the ad of the j-th I token after the
position (`future` MTP mode); the first is the ad of that very request.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import numpy as np
import torch

from gpr.core.errors import GprInputError
from gpr.core.io import read_json
from gpr.data.schema import Dataset
from gpr.market.journeys import SPLIT_CODE, TYPE_CODE, Journeys
from gpr.tokenizer.pipeline import read_sids

U, O, E, I = (TYPE_CODE[t] for t in "UOEI")
PAD = -1
USER_FIELDS = ("age_band", "gender", "region", "activity_tier")
USER_FIELD_SIZES = (5, 2, 6, 3)
ENV_SIZES = (3, 6, 3, 24)  # scene, slot (1..5), device, hour


@dataclass
class SidTable:
    """Semantic IDs indexed by item id. `codes[item]` is (L,), -1 where the item has no SID."""

    codes: np.ndarray
    dedup: np.ndarray
    codebook_size: int
    is_target: np.ndarray  # items that generation may produce (kind == ad)

    @property
    def levels(self) -> int:
        return self.codes.shape[1]

    @classmethod
    def load(cls, tok_dir: str | Path, codebook_size: int | None = None) -> SidTable:
        """The SIDs of a TOK dir. Its tokenizer.json is the one source of the codebook size;
        `codebook_size` is the fallback for SID files without one (else the largest code + 1)."""
        table, codes = read_sids(tok_dir)
        ids = table.column("item_id").to_numpy()
        n = int(ids.max()) + 1
        full = np.full((n, codes.shape[1]), -1, dtype=np.int64)
        full[ids] = codes
        dedup = np.full(n, -1, dtype=np.int64)
        dedup[ids] = table.column("dedup").to_numpy()
        target = np.zeros(n, dtype=bool)
        target[ids] = table.column("kind").to_numpy(zero_copy_only=False).astype(str) == "ad"
        meta = Path(tok_dir) / "tokenizer.json"
        if meta.is_file():
            k = int(read_json(meta)["config"]["codebook_size"])
        else:
            k = codebook_size or int(codes.max()) + 1
        return cls(full, dedup, k, target)


@dataclass
class TokenStreams:
    """Every user's token stream, concatenated user after user (CSR by `indptr`)."""

    indptr: np.ndarray  # (n_users + 1,)
    users: np.ndarray  # (n_users,)
    ttype: np.ndarray  # (T,)
    item: np.ndarray
    field: np.ndarray  # (T, 4)
    action: np.ndarray
    day: np.ndarray
    split: np.ndarray
    request: np.ndarray
    n_user_tokens: int  # leading U tokens of every stream (kept by truncation)
    ts: np.ndarray  # (T,) event timestamp in seconds (0 on U tokens)

    @property
    def n_users(self) -> int:
        return len(self.users)


def known_user_fields(ds: Dataset) -> list[str]:
    """The user fields the dataset knows for some user: one U token each, in USER_FIELDS order."""
    return [f for f in USER_FIELDS if (ds.col("users", f) >= 0).any()]


def build_journeys(ds: Dataset, jour: Journeys | None = None) -> TokenStreams:
    """The log index's rows (grouped by user, in journey order) with each user's U tokens rebuilt
    from users.parquet; `jour`: the dataset's index when already built."""
    jour = Journeys.from_dataset(ds) if jour is None else jour
    rows = np.nonzero(jour.ttype != U)[0]  # U tokens are rebuilt, one per known feature group
    users_tab = {k: ds.col("users", k) for k in ("user_id", *USER_FIELDS)}
    known = known_user_fields(ds)
    uid = users_tab["user_id"]
    n_u = len(known)
    ev_u = jour.user[rows]
    user_index = np.searchsorted(uid[np.argsort(uid)], ev_u)
    uid_sorted = uid[np.argsort(uid)]
    counts = np.bincount(user_index, minlength=len(uid_sorted)) + n_u
    indptr = np.r_[0, np.cumsum(counts)]
    total = int(indptr[-1])
    body = np.ones(total, dtype=bool)
    for g in range(n_u):
        body[indptr[:-1] + g] = False
    out_t = np.full(total, U, dtype=np.int64)
    out_item = np.full(total, -1, dtype=np.int64)
    out_field = np.zeros((total, 4), dtype=np.int64)
    out_action = np.zeros(total, dtype=np.int64)
    out_day = np.zeros(total, dtype=np.int64)
    out_split = np.zeros(total, dtype=np.int64)
    out_req = np.full(total, -1, dtype=np.int64)
    out_t[body] = jour.ttype[rows]
    out_item[body] = jour.item[rows]
    env = np.stack([jour.scene[rows], jour.slot[rows], jour.device[rows], jour.hour[rows]], 1)
    out_field[body] = np.maximum(env, 0)
    out_action[body] = np.maximum(jour.action[rows], 0)
    out_day[body] = jour.day[rows]
    out_split[body] = jour.split[rows]
    out_req[body] = jour.request[rows]
    out_ts = np.zeros(total, dtype=np.int64)
    out_ts[body] = jour.ts[rows]
    by_id = np.argsort(uid)
    for g, f in enumerate(known):
        pos = indptr[:-1] + g
        out_field[pos, 0] = USER_FIELDS.index(f)
        out_field[pos, 1] = np.maximum(users_tab[f][by_id], 0)
    # U tokens take the day and split of the user's first event
    first_body = np.minimum(indptr[:-1] + n_u, total - 1)
    for g in range(n_u):
        out_day[indptr[:-1] + g] = out_day[first_body]
        out_split[indptr[:-1] + g] = out_split[first_body]
    return TokenStreams(
        indptr,
        uid_sorted,
        out_t,
        out_item,
        out_field,
        out_action,
        out_day,
        out_split,
        out_req,
        n_u,
        out_ts,
    )


def next_targets(j: TokenStreams, n_heads: int) -> np.ndarray:
    """(T, n_heads): item of the h-th I token after each position, same user; -1 if none."""
    is_i = j.ttype == I
    rank = np.cumsum(is_i)  # I tokens at or before each position (global)
    i_pos = np.nonzero(is_i)[0]
    user_of = np.repeat(np.arange(j.n_users), np.diff(j.indptr))
    out = np.full((len(j.ttype), n_heads), -1, dtype=np.int64)
    for h in range(n_heads):
        k = rank + h  # index into i_pos of the (h+1)-th next I
        ok = k < len(i_pos)
        pos = i_pos[np.minimum(k, len(i_pos) - 1)]
        ok &= user_of[pos] == user_of
        out[:, h] = np.where(ok, j.item[pos], -1)
    return out


def prediction_mask(j: TokenStreams, targets: np.ndarray) -> np.ndarray:
    """Positions that predict: E tokens followed by their own I (ad world), else I tokens."""
    if (j.ttype == E).any():
        nxt = np.r_[j.ttype[1:], PAD]
        nxt_req = np.r_[j.request[1:], -1]
        return (j.ttype == E) & (nxt == I) & (nxt_req == j.request)
    return (j.ttype == I) & (targets[:, 0] >= 0)


@dataclass
class Window:
    user: int  # index into TokenStreams.users
    start: int  # absolute token index of the first body token
    end: int  # exclusive
    own_from: int  # predictions at absolute positions >= own_from belong to this window


def make_windows(j: TokenStreams, max_len: int, positions: np.ndarray) -> list[Window]:
    """Cover every wanted prediction position once, each with up to max_len - n_U tokens of context.

    Windows of the body tokens advance by half a window; each owns the positions after the
    previous window's end, so every prediction sees at least half a window of past.
    """
    body = max_len - j.n_user_tokens
    if body < 2:
        raise GprInputError(
            f"max_len {max_len} leaves no room after {j.n_user_tokens} U tokens", field="max_len"
        )
    half = max(body // 2, 1)
    wanted = np.zeros(len(j.ttype), dtype=np.int64)
    wanted[positions] = 1
    cum = np.r_[0, np.cumsum(wanted)]
    out: list[Window] = []
    for u in range(j.n_users):
        lo, hi = int(j.indptr[u]) + j.n_user_tokens, int(j.indptr[u + 1])
        if cum[hi] - cum[lo] == 0:
            continue
        s, own = lo, lo
        while True:
            e = min(s + body, hi)
            if cum[e] - cum[own] > 0:
                out.append(Window(u, s, e, own))
            if e >= hi:
                break
            s, own = s + half, e
    return out


@dataclass
class Batch:
    """Padded model inputs for a list of windows, plus the gathered prediction targets."""

    ttype: torch.Tensor  # (B, T) -1 = padding
    codes: torch.Tensor  # (B, T, L)
    field: torch.Tensor  # (B, T, 4)
    action: torch.Tensor  # (B, T)
    item: torch.Tensor  # (B, T) item id, -1 elsewhere
    pred_b: torch.Tensor  # (P,)
    pred_t: torch.Tensor  # (P,)
    targets: torch.Tensor  # (P, H) item ids, -1 = no target (missing or outside the allowed splits)
    target_codes: torch.Tensor  # (P, H, L+1) codes + dedup, -1 where no target
    shown_action: torch.Tensor  # (P,) outcome of the first target (world), -1 if unknown
    request: torch.Tensor  # (P,) request id of the position (-1 for public data)
    position: torch.Tensor  # (P,) absolute token index (for bookkeeping)
    thought: torch.Tensor = dc_field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    # (B, T) event timestamps in seconds
    ts: torch.Tensor = dc_field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{k: v.to(device) for k, v in self.__dict__.items()})

    def last_item(self) -> torch.Tensor:
        """(P,) the latest O/I item id at or before each prediction position, -1 if none."""
        t = torch.arange(self.item.shape[1], device=self.item.device).expand_as(self.item)
        latest = torch.where(self.item >= 0, t, -1).cummax(dim=1).values  # (B, T)
        pos = latest[self.pred_b, self.pred_t]
        return torch.where(pos >= 0, self.item[self.pred_b, pos.clamp(min=0)], -1)


def collate(
    j: TokenStreams,
    windows: list[Window],
    sids: SidTable,
    targets: np.ndarray,
    pred_mask: np.ndarray,
    allowed_splits: tuple[int, ...],
    max_len: int,
) -> Batch:
    """Pad windows to max_len; targets outside `allowed_splits` are dropped (no label leakage)."""
    b = len(windows)
    n_u, L, K = j.n_user_tokens, sids.levels, sids.codebook_size
    ttype = np.full((b, max_len), PAD, dtype=np.int64)
    codes = np.full((b, max_len, L), K, dtype=np.int64)
    field = np.zeros((b, max_len, 4), dtype=np.int64)
    action = np.zeros((b, max_len), dtype=np.int64)
    item = np.full((b, max_len), -1, dtype=np.int64)
    ts = np.zeros((b, max_len), dtype=np.int64)
    pb, pt, pp = [], [], []
    for r, w in enumerate(windows):
        head = np.arange(j.indptr[w.user], j.indptr[w.user] + n_u)
        idx = np.r_[head, np.arange(w.start, w.end)]
        n = len(idx)
        ttype[r, :n] = j.ttype[idx]
        it = j.item[idx]
        has = (it >= 0) & (it < len(sids.codes))
        c = np.where(has[:, None], sids.codes[np.where(has, it, 0)], K)
        codes[r, :n] = np.where(c < 0, K, c)
        field[r, :n] = j.field[idx]
        action[r, :n] = j.action[idx]
        ts[r, :n] = j.ts[idx]
        item[r, :n] = np.where(np.isin(j.ttype[idx], (O, I)), it, -1)
        own = np.nonzero(pred_mask[w.own_from : w.end])[0] + w.own_from
        pb.append(np.full(len(own), r))
        pt.append(own - w.start + n_u)
        pp.append(own)
    pos = np.concatenate(pp) if pp else np.zeros(0, np.int64)
    tgt = targets[pos].copy()
    # a head's target counts only if that target's token lies in an allowed split
    t_split = _target_split(j, pos, targets.shape[1])
    tgt[~np.isin(t_split, allowed_splits)] = -1
    known = (tgt >= 0) & (tgt < len(sids.codes))
    tc = np.full((*tgt.shape, L + 1), -1, dtype=np.int64)
    safe = np.where(known, tgt, 0)
    tc[..., :L] = np.where(known[..., None], sids.codes[safe], -1)
    tc[..., L] = np.where(known, sids.dedup[safe], -1)
    tgt[~known] = -1
    nxt = np.minimum(pos + 1, len(j.ttype) - 1)
    shown = (
        np.where(j.ttype[nxt] == I, j.action[nxt], -1)
        if (j.ttype == E).any()
        else np.full(len(pos), -1)
    )
    return Batch(
        ttype=torch.from_numpy(ttype),
        codes=torch.from_numpy(codes),
        field=torch.from_numpy(field),
        action=torch.from_numpy(action),
        item=torch.from_numpy(item),
        pred_b=torch.from_numpy(np.concatenate(pb) if pb else np.zeros(0, np.int64)),
        pred_t=torch.from_numpy(np.concatenate(pt) if pt else np.zeros(0, np.int64)),
        targets=torch.from_numpy(tgt),
        target_codes=torch.from_numpy(tc),
        shown_action=torch.from_numpy(shown),
        request=torch.from_numpy(j.request[pos]),
        position=torch.from_numpy(pos),
        ts=torch.from_numpy(ts),
    )


def target_rows(j: TokenStreams, pos: np.ndarray, n_heads: int) -> np.ndarray:
    """(len(pos), n_heads) token index of the h-th next I token after each position (-1: none).

    May belong to a later user; `next_targets` / `collate` decide whether the target counts.
    """
    i_pos = np.nonzero(j.ttype == I)[0]
    if not len(i_pos):
        return np.full((len(pos), n_heads), -1, dtype=np.int64)
    rank = np.cumsum(j.ttype == I)[pos]
    k = rank[:, None] + np.arange(n_heads)[None, :]
    return np.where(k < len(i_pos), i_pos[np.minimum(k, len(i_pos) - 1)], -1)


def _target_split(j: TokenStreams, pos: np.ndarray, n_heads: int) -> np.ndarray:
    """Split of the h-th next I token after each position (the token that holds the label)."""
    rows = target_rows(j, pos, n_heads)
    return np.where(rows >= 0, j.split[np.maximum(rows, 0)], -1)


def tail_windows(j: TokenStreams, positions: np.ndarray, max_len: int) -> list[Window]:
    """One window per position, ending at it, with as much past as fits (evaluation)."""
    body = max_len - j.n_user_tokens
    user_of = np.searchsorted(j.indptr, positions, side="right") - 1
    lo = j.indptr[user_of] + j.n_user_tokens
    start = np.maximum(lo, positions + 1 - body)
    return [
        Window(int(u), int(s), int(p) + 1, int(p))
        for u, s, p in zip(user_of, start, positions, strict=True)
    ]


def positions_for_split(j: TokenStreams, pred_mask: np.ndarray, split: str) -> np.ndarray:
    """Prediction positions whose first target (the label) lies in `split`."""
    pos = np.nonzero(pred_mask)[0]
    return pos[_target_split(j, pos, 1)[:, 0] == SPLIT_CODE[split]]

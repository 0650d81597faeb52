"""External knowledge as thought tokens (spec §3.1): what the user is likely interested in.

Default generator: a template over the topics of the user's engaged items (organic views, clicked
or otherwise interacted ads) *before* the window starts, so no future leaks in. Each of the top-k
topics becomes one text ("likely interested in skincare"), embedded offline with MiniLM; the
table of topic embeddings ships inside the checkpoint, so nothing is called online. A different
generator (an LLM behind an HTTP endpoint, say) only has to map topic phrases to texts.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gpr.data.schema import Dataset
from gpr.model.journey import I, O, TokenStreams, Window

Template = Callable[[list[str]], list[str]]


def default_template(phrases: list[str]) -> list[str]:
    return [f"likely interested in {p}" for p in phrases]


def item_topics(ds: Dataset) -> tuple[np.ndarray, list[str]]:
    """Per item id a topic index (-1 none) and the topic phrases: the most specific attribute."""
    ids = ds.col("items", "item_id")
    attrs = ds.col("items", "attributes").astype(str)
    last = np.asarray([a.rsplit("|", 1)[-1].strip() for a in attrs])
    phrases, inv = np.unique(last, return_inverse=True)
    topic = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
    topic[ids] = np.where(last == "", -1, inv)
    return topic, [str(p) for p in phrases]


def topic_table(
    phrases: list[str],
    encoder: Callable[[list[str]], np.ndarray],
    template: Template = default_template,
) -> np.ndarray:
    """(n_topics, dim) float32 embeddings of the template texts."""
    return np.asarray(encoder(template(phrases)), dtype=np.float32)


def cached_topic_table(
    cache_dir: Path,
    phrases: list[str],
    encoder: Callable[[], Callable[[list[str]], np.ndarray]],
    name: str,
    template: Template = default_template,
) -> np.ndarray:
    """topic_table, read from cache_dir when the same encoder `name` embedded the same texts.

    `encoder` builds the encoder only on a cache miss, so a machine without MiniLM can train from a
    dataset embedded elsewhere. The file is `thoughts_<sha256 of name and texts>.npy`.
    """
    texts = template(phrases)
    key = hashlib.sha256("\n".join([name, *texts]).encode()).hexdigest()[:16]
    path = cache_dir / f"thoughts_{key}.npy"
    if path.exists():
        table = np.load(path, allow_pickle=False)
        if table.ndim == 2 and table.shape[0] == len(texts):
            return table.astype(np.float32, copy=False)
    table = np.asarray(encoder()(texts), dtype=np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npy", dir=cache_dir)
    with os.fdopen(fd, "wb") as f:
        np.save(f, table, allow_pickle=False)
    os.replace(tmp, path)
    return table


def window_thoughts(
    j: TokenStreams, windows: list[Window], item_topic: np.ndarray, k: int, clicks_only: bool
) -> np.ndarray:
    """(B, k) the user's k most frequent topics before each window (ties: most recent), -1 pad.

    Engaged = organic views and I tokens (only clicked ones when `clicks_only`: the ad world).
    """
    out = np.full((len(windows), k), -1, dtype=np.int64)
    for r, w in enumerate(windows):
        lo = int(j.indptr[w.user]) + j.n_user_tokens
        t, it = j.ttype[lo : w.start], j.item[lo : w.start]
        engaged = (t == O) | ((t == I) & ((j.action[lo : w.start] >= 1) | (not clicks_only)))
        top = item_topic[it[engaged & (it >= 0)]]
        top = top[top >= 0]
        if len(top) == 0:
            continue
        n = np.bincount(top)
        recent = np.zeros_like(n)
        recent[top] = np.arange(len(top))  # last position of each topic
        order = np.lexsort((-recent, -n))
        order = order[n[order] > 0][:k]
        out[r, : len(order)] = order
    return out

"""Collaborative item vectors for the tokenizer: truncated SVD of a PPMI co-occurrence matrix.

Content embeddings put items that *look* alike under one SID prefix; generative retrieval also
gains when items *bought together* share prefixes (LETTER, Wang et al. 2024, regularises RQ-VAE
towards collaborative embeddings for this reason). Here the collaborative part is plain and
leak-free: item pairs within `window` positions of each other in a user's **train-split**
O/I events (validation and test targets never count), positive PMI, rank-`dim` SVD, rows
L2-normalised. Items that never co-occur get a zero vector and keep only their content part.
`with_collab` concatenates it to the content embedding, scaled by `weight`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd

from gpr.core.errors import GprInputError
from gpr.data.schema import EVENTS, read_table


def item_sequences(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, split) of every O/I event, in (user, timestamp) order."""
    ev = read_table(Path(data_dir) / "events.parquet", EVENTS)
    ev = ev.filter(pc.is_in(ev.column("token_type"), value_set=pa.array(["O", "I"])))
    user = ev.column("user_id").to_numpy()
    order = np.lexsort((ev.column("timestamp").to_numpy(), user))
    item = ev.column("item_id").to_numpy()
    split = ev.column("split").to_numpy(zero_copy_only=False)
    return user[order], item[order], split[order]


def ppmi_svd(
    user: np.ndarray, item_index: np.ndarray, n_items: int, dim: int, window: int, seed: int
) -> np.ndarray:
    """(n_items, dim) unit-norm rows (zero where an item co-occurs with nothing).

    `item_index` is each event's row in the item table (-1: unknown item, skipped).
    """
    rows, cols = [], []
    for off in range(1, window + 1):
        a, b = item_index[:-off], item_index[off:]
        ok = (user[:-off] == user[off:]) & (a >= 0) & (b >= 0) & (a != b)
        rows += [a[ok], b[ok]]
        cols += [b[ok], a[ok]]
    r, c = np.concatenate(rows), np.concatenate(cols)
    out = np.zeros((n_items, dim), dtype=np.float32)
    if not len(r):
        return out
    m = sp.coo_matrix((np.ones(len(r)), (r, c)), shape=(n_items, n_items)).tocsr()  # sums pairs
    total = m.sum()
    deg = np.asarray(m.sum(axis=1)).ravel()
    coo = m.tocoo()
    pmi = np.log(coo.data * total / (deg[coo.row] * deg[coo.col]))
    pos = pmi > 0
    ppmi = sp.csr_matrix((pmi[pos], (coo.row[pos], coo.col[pos])), shape=m.shape)
    k = min(dim, n_items - 1)
    u, s, _ = randomized_svd(ppmi, k, random_state=seed)
    vec = u * np.sqrt(s)
    norm = np.linalg.norm(vec, axis=1, keepdims=True)
    out[:, :k] = np.where(norm > 0, vec / np.maximum(norm, 1e-12), 0.0)
    return out


def with_collab(
    data_dir: str | Path,
    item_ids: np.ndarray,
    content: np.ndarray,
    dim: int,
    weight: float,
    window: int,
    seed: int,
) -> np.ndarray:
    """[content | weight * collaborative] (n, d + dim) for items in `item_ids` order."""
    user, item, split = item_sequences(data_dir)
    user, item = user[split == "train"], item[split == "train"]
    if not len(item):
        raise GprInputError(
            "tokenizer.collab_dim > 0 needs train-split O/I events",
            file=Path(data_dir) / "events.parquet",
            field="split",
        )
    row = np.full(max(int(item_ids.max()), int(item.max())) + 1, -1)
    row[item_ids] = np.arange(len(item_ids))
    collab = ppmi_svd(user, row[item], len(item_ids), dim, window, seed)
    return np.concatenate([content, weight * collab], axis=1).astype(np.float32)

"""A growable prefix trie of semantic-ID paths with per-node, per-segment counts of live leaves:
the index of serve.catalogue.LiveCatalogue (which holds the lock; nothing here locks).

- `child[l]` (cap_l, size_l) int64: the node at depth l+1 under a depth-l node, or -1
  (l = 0..D-1). The last level leads to a leaf, which is the ad's column (slot), not a row here.
- `counts[l]` (cap_l, S): how many live leaves under each depth-l node target segment s.
- Rows come with spare capacity (doubled when full, at most the number of possible nodes at that
  depth), so inserting a path is amortised O(D); a bulk insert allocates exactly what it needs.
  A grown table replaces the old one (a reader holding the old one still sees every node it
  knew); an entry only ever goes from -1 to a node id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from gpr.core.errors import GprInputError

INITIAL_ROWS = 16


def count_dtype(bound: int) -> torch.dtype:
    """The smallest count type for at most `bound` leaves under a node."""
    if bound < 1 << 15:
        return torch.int16
    return torch.int32 if bound < 1 << 31 else torch.int64


class LiveTrie:
    def __init__(self, sizes: Sequence[int], n_segments: int) -> None:
        self.sizes = [int(s) for s in sizes]
        if not self.sizes or min(self.sizes) < 1:
            raise GprInputError(f"bad level sizes {list(sizes)}", field="sizes")
        self.n_nodes = [1] + [0] * self.depth  # per depth 0..D (depth D: the leaves)
        self.child: list[torch.Tensor] = []
        self.child_np: list[np.ndarray] = []  # numpy views of `child`
        self.counts: list[torch.Tensor] = []
        for lv in range(self.depth):
            rows = min(INITIAL_ROWS, self._max_nodes(lv))
            self.child.append(torch.full((rows, self.sizes[lv]), -1, dtype=torch.long))
            self.child_np.append(self.child[lv].numpy())
            dtype = count_dtype(math.prod(self.sizes[lv:]))
            self.counts.append(torch.zeros(rows, n_segments, dtype=dtype))

    @property
    def depth(self) -> int:
        return len(self.sizes)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.child, *self.counts))

    def _max_nodes(self, depth: int) -> int:
        return math.prod(self.sizes[:depth])

    # --- reads ----------------------------------------------------------------------------------
    def nodes(self, paths: np.ndarray) -> np.ndarray:
        """(n, D) paths -> (n, D + 1) node at each depth along them (-1 past where they leave the
        trie; the last column is the leaf)."""
        n = paths.shape[0]
        out = np.full((n, self.depth + 1), -1, dtype=np.int64)
        out[:, 0] = 0
        for lv in range(self.depth):
            node, code = out[:, lv], paths[:, lv]
            ok = (node >= 0) & (code >= 0) & (code < self.sizes[lv])
            nxt = self.child_np[lv][np.maximum(node, 0), np.clip(code, 0, self.sizes[lv] - 1)]
            out[:, lv + 1] = np.where(ok, nxt, -1)
        return out

    def has_live(self, level: int, children: np.ndarray, seg: np.ndarray) -> np.ndarray:
        """children (N, k) at depth level+1 < D, seg (N, 1) -> a live leaf of that segment
        below (one flat gather)."""
        cnt = self.counts[level + 1].numpy()
        return cnt.reshape(-1).take(children * cnt.shape[1] + seg) > 0

    def free_dedup(self, codes: np.ndarray) -> int:
        """The lowest free de-dup index under the prefix `codes` (D - 1 codes)."""
        node = 0
        for lv, c in enumerate(codes):
            if not 0 <= c < self.sizes[lv]:
                raise GprInputError(f"code {c} outside level {lv}", field="embedding")
            node = int(self.child_np[lv][node, c])
            if node < 0:
                return 0
        free = np.flatnonzero(self.child_np[self.depth - 1][node] < 0)
        if len(free) == 0:
            raise GprInputError(
                f"the de-dup level is full ({self.sizes[-1]} ads on path {codes.tolist()})",
                field="dedup",
            )
        return int(free[0])

    # --- writes ---------------------------------------------------------------------------------
    def insert(self, paths: np.ndarray, first_leaf: int) -> None:
        """Link new paths (validated: in range, not present, unique) to leaves first_leaf, ..."""
        n = len(paths)
        parent = np.zeros(n, dtype=np.int64)
        for lv in range(self.depth - 1):
            size, code = self.sizes[lv], paths[:, lv]
            nxt = self.child_np[lv][parent, code].copy()
            new = nxt < 0
            if new.any():
                uniq, inv = np.unique(parent[new] * size + code[new], return_inverse=True)
                base = self.n_nodes[lv + 1]
                self._grow(lv + 1, base + len(uniq))
                ids = base + np.arange(len(uniq))
                self.child_np[lv][uniq // size, uniq % size] = ids
                nxt[new] = ids[inv.reshape(-1)]
                self.n_nodes[lv + 1] = base + len(uniq)
            parent = nxt
        self.child_np[-1][parent, paths[:, -1]] = np.arange(first_leaf, first_leaf + n)
        self.n_nodes[-1] += n

    def add_counts(self, paths: np.ndarray, member: torch.Tensor) -> None:
        """Add `member` (n, S) (+-1 per targeted segment) at every node along `paths` (n, D)."""
        node = np.zeros(len(paths), dtype=np.int64)
        for lv in range(self.depth):
            c = self.counts[lv]
            v = member.to(c.dtype)
            if len(paths) == 1:
                c[int(node[0])] += v[0]
            else:
                c.index_add_(0, torch.from_numpy(node), v)
            node = self.child_np[lv][node, paths[:, lv]]

    def _grow(self, depth: int, needed: int) -> None:
        cap = self.child[depth].shape[0]
        if needed <= cap:
            return
        new_cap = min(max(needed, 2 * cap), self._max_nodes(depth))
        tab = torch.full((new_cap, self.sizes[depth]), -1, dtype=torch.long)
        tab[:cap] = self.child[depth]
        cnt = self.counts[depth]
        grown = torch.zeros(new_cap, cnt.shape[1], dtype=cnt.dtype)
        grown[:cap] = cnt
        self.counts[depth] = grown
        self.child_np[depth] = tab.numpy()
        self.child[depth] = tab  # published last: readers may hold the old table

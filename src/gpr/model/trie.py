"""Prefix trie of legal semantic-ID paths as dense per-level child tables (GPU-friendly).

Level l has n_l nodes (level 0: the root); `child[l][node, code]` is the node at level l+1 or -1.
A per-request eligibility mask (B, A) becomes per-level counts of eligible leaves under each
node, so decoding can only follow paths to ads that may be shown for that request.
"""

from __future__ import annotations

import numpy as np
import torch

from gpr.core.errors import GprInputError


class Trie:
    def __init__(self, paths: np.ndarray, sizes: list[int], items: np.ndarray) -> None:
        """paths (A, D) codes per level (last level: de-dup index); items (A,) their item ids."""
        a, depth = paths.shape
        if a == 0:
            raise GprInputError("no items to build a trie from", field="sids")
        if (paths < 0).any() or (paths >= np.asarray(sizes)[None, :]).any():
            raise GprInputError("a path has a code outside its level's range", field="sids")
        node = np.zeros(a, dtype=np.int64)
        n_nodes = 1
        child: list[torch.Tensor] = []
        node_of = [node]
        for lv in range(depth):
            key = node * sizes[lv] + paths[:, lv]
            uniq, inv = np.unique(key, return_inverse=True)
            table = np.full((n_nodes, sizes[lv]), -1, dtype=np.int64)
            table[uniq // sizes[lv], uniq % sizes[lv]] = np.arange(len(uniq))
            child.append(torch.from_numpy(table))
            node, n_nodes = inv.astype(np.int64), len(uniq)
            node_of.append(node)
        if n_nodes != a:
            raise GprInputError(
                f"{a - n_nodes} items share a full path (de-dup level missing?)", field="sids"
            )
        leaf = np.empty(a, dtype=np.int64)
        leaf[node] = items
        self.sizes = sizes
        self.child = child
        self.node_of = [torch.from_numpy(n) for n in node_of]  # per level: node of each item
        self.leaf_item = torch.from_numpy(leaf)
        self.items = torch.from_numpy(np.asarray(items, dtype=np.int64))
        self.paths = torch.from_numpy(np.asarray(paths, dtype=np.int64))  # (A, D), by column
        col = np.full(int(self.items.max()) + 1, -1, dtype=np.int64)
        col[self.items.numpy()] = np.arange(a)
        self.col = torch.from_numpy(col)

    @property
    def depth(self) -> int:
        return len(self.sizes)

    def to(self, device: torch.device | str) -> Trie:
        self.child = [c.to(device) for c in self.child]
        self.node_of = [n.to(device) for n in self.node_of]
        self.leaf_item = self.leaf_item.to(device)
        self.items = self.items.to(device)
        self.paths = self.paths.to(device)
        self.col = self.col.to(device)
        return self

    def column(self, items: torch.Tensor) -> torch.Tensor:
        """Item ids (any shape) -> their column in `items`, -1 for ids that are not leaves."""
        ok = (items >= 0) & (items < len(self.col))
        return torch.where(ok, self.col[items.clamp(0, len(self.col) - 1)], -1)

    def parents(self, paths: torch.Tensor) -> torch.Tensor:
        """(N, D) paths -> (N, D) node before each level (-1 once the path leaves the trie)."""
        n = paths.shape[0]
        out = torch.full((n, self.depth), -1, dtype=torch.long, device=paths.device)
        node = torch.zeros(n, dtype=torch.long, device=paths.device)
        for lv in range(self.depth):
            ok = (node >= 0) & (paths[:, lv] >= 0) & (paths[:, lv] < self.sizes[lv])
            out[:, lv] = torch.where(ok, node, -1)
            nxt = self.child[lv][node.clamp(min=0), paths[:, lv].clamp(0, self.sizes[lv] - 1)]
            node = torch.where(ok, nxt, -1)
        return out

    def walk(self, paths: torch.Tensor) -> torch.Tensor:
        """(N, D) full paths -> (N,) leaf node (-1 where a path leaves the trie)."""
        node = torch.zeros(paths.shape[0], dtype=torch.long, device=paths.device)
        for lv in range(self.depth):
            code = paths[:, lv]
            ok = (node >= 0) & (code >= 0) & (code < self.sizes[lv])
            nxt = self.child[lv][node.clamp(min=0), code.clamp(0, self.sizes[lv] - 1)]
            node = torch.where(ok, nxt, -1)
        return node

    def eligible_counts(self, eligible: torch.Tensor) -> list[torch.Tensor]:
        """(B, A) bool over `items` -> per level l=1..D the (B, n_l) count of eligible leaves."""
        e = eligible.float()
        out = []
        for lv in range(1, self.depth + 1):
            n = self.child[lv - 1].max().item() + 1
            out.append(
                torch.zeros(e.shape[0], int(n), device=e.device).index_add_(1, self.node_of[lv], e)
            )
        return out

    def legal(
        self,
        level: int,
        nodes: torch.Tensor,
        counts: list[torch.Tensor] | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N,) parent nodes at `level` -> (N, size) codes that continue a legal (eligible) path.

        `rows` (N,) says which request of `counts` each node belongs to.
        """
        ch = self.child[level][nodes.clamp(min=0)]
        ok = (ch >= 0) & (nodes >= 0).unsqueeze(1)
        if counts is not None:
            assert rows is not None
            c = counts[level][rows.unsqueeze(1), ch.clamp(min=0)]
            ok &= c > 0
        return ok

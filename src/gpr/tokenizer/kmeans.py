"""k-means via faiss, an optional capacity-balanced variant, and residual k-means (RQ-Kmeans).

Nearest-centroid assignment is one torch function (`nearest`) used everywhere (k-means codes,
RQ-Kmeans encoding, the torch residual quantizer), so the same inputs give bit-identical codes.
"""

from __future__ import annotations

import numpy as np
import torch

# faiss subsamples the training set to at most this many points per centroid (deterministic by
# seed); 1024 x 256 codes = 262k points per level, plenty for a stable codebook.
MAX_POINTS_PER_CENTROID = 1024
_CHUNK_ELEMS = 1 << 24  # rows x codes per distance block
BALANCED_ROUNDS = 5  # alternations of capacity-constrained assignment and centroid update


def nearest(
    x: torch.Tensor, centroids: torch.Tensor, penalty: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (n,) int64 and squared distance (n,) of the nearest centroid for each row of x.

    `penalty` (K,) is added to every distance to a centroid (use +inf to forbid one). Rows are
    processed in blocks so that memory stays bounded for millions of rows.
    """
    c2 = (centroids * centroids).sum(1)
    if penalty is not None:
        c2 = c2 + penalty
    step = max(1, _CHUNK_ELEMS // max(1, centroids.shape[0]))
    idx, dist = [], []
    for s in range(0, x.shape[0], step):
        xb = x[s : s + step]
        d = c2[None, :] - 2.0 * (xb @ centroids.T)
        m, i = d.min(dim=1)
        idx.append(i)
        dist.append(m + (xb * xb).sum(1))
    if not idx:
        return x.new_zeros(0, dtype=torch.long), x.new_zeros(0)
    return torch.cat(idx), torch.cat(dist)


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (n,) int64 for float32 numpy inputs (CPU torch)."""
    idx, _ = nearest(torch.from_numpy(_f32(x)), torch.from_numpy(_f32(centroids)))
    return idx.numpy().astype(np.int64)


def balanced_assign(x: np.ndarray, centroids: np.ndarray, capacity: int) -> np.ndarray:
    """Capacity-constrained greedy assignment: each centroid takes at most `capacity` rows.

    Rounds: every unassigned row proposes to its nearest centroid that still has room; each
    centroid accepts its closest proposers up to its remaining room. At least one centroid fills
    (or everyone is accepted) per round, so there are at most K + 1 rounds, all vectorised.
    """
    n, k = x.shape[0], centroids.shape[0]
    if capacity * k < n:
        raise ValueError(f"capacity {capacity} x {k} centroids < {n} rows")
    xt, ct = torch.from_numpy(_f32(x)), torch.from_numpy(_f32(centroids))
    out = np.full(n, -1, dtype=np.int64)
    room = np.full(k, capacity, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        penalty = torch.from_numpy(np.where(room > 0, 0.0, np.inf).astype(np.float32))
        i_t, d_t = nearest(xt[torch.from_numpy(todo)], ct, penalty)
        idx, dist = i_t.numpy(), d_t.numpy()
        order = np.lexsort((todo, dist, idx))  # by centroid, then distance, then row (ties)
        sidx = idx[order]
        first = np.searchsorted(sidx, sidx, side="left")
        rank = np.arange(sidx.size) - first
        ok = rank < room[sidx]
        out[todo[order[ok]]] = sidx[ok]
        room -= np.bincount(sidx[ok], minlength=k)
        todo = np.sort(todo[order[~ok]])
    return out


def kmeans(
    x: np.ndarray, k: int, niter: int, seed: int, balanced: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded faiss k-means. Returns centroids (k, d) float32 and nearest codes (n,) int64.

    With `balanced`, after faiss converges we alternate BALANCED_ROUNDS times: assign rows under
    capacity ceil(n/k), move each centroid to the mean of its rows (kept if it got none). The
    returned codes are the plain nearest-centroid codes of the final centroids, i.e. what encoding
    produces; balancing shapes the codebook, encoding stays nearest-code.
    """
    x = _f32(x)
    n, d = x.shape
    if n < k:
        raise ValueError(f"k-means needs at least k={k} rows, got {n}")
    import faiss  # here, not at import: training and serving read SIDs and never need faiss

    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=int(seed) % (2**31 - 1),
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=MAX_POINTS_PER_CENTROID,
    )
    km.train(x)
    cent = np.ascontiguousarray(km.centroids, dtype=np.float32)
    if balanced:
        cap = -(-n // k)
        xt = torch.from_numpy(x)
        for _ in range(BALANCED_ROUNDS):
            lab = torch.from_numpy(balanced_assign(x, cent, cap))
            counts = torch.bincount(lab, minlength=k)
            sums = torch.zeros(k, d, dtype=torch.float64).index_add_(0, lab, xt.double())
            has = (counts > 0).numpy()
            cent[has] = (sums[has] / counts[has, None]).float().numpy()
    return cent, assign(x, cent)


def residual_kmeans(
    x: np.ndarray, levels: int, k: int, niter: int, seed: int, balanced: bool = False
) -> tuple[list[np.ndarray], np.ndarray]:
    """RQ-Kmeans: k-means on the residuals, level by level.

    Returns the centroids [levels x (k, d)] and the codes (n, levels) int64; the level-l residual
    is x minus the sum of the chosen centroids of levels < l.
    """
    r = _f32(x).copy()
    cents, codes = [], []
    for level in range(levels):
        c, a = kmeans(r, k, niter, seed + level, balanced)
        r = r - c[a]
        cents.append(c)
        codes.append(a)
    return cents, np.stack(codes, axis=1).astype(np.int64)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)

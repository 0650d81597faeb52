"""Session topics: which subtopic a session is about, from the subtopics of its organic views.

A session has one current intent (one of the user's interest subtopics), and its organic views
spread around it: many views land in nearby subtopics, few in the intent's own. Clicks follow
the intent, so the ranker wants the intent, not the raw mix of viewed subtopics. This module
deconvolves the mix with a mixture model fitted by EM on the train days' organic views alone
(no clicks, no hidden truth):

    P(session topic t | user)    = the user's topic shares (from their earlier sessions)
    P(view subtopic s | topic t) = T[t, s]      (S x S, learnt; S = number of subtopics)

T starts at softmax(tau * cos(centroid_t, centroid_s) + log size_s) over the content centroids,
so that topic t means subtopic t. For a request, the prior over topics is the share of the
user's earlier sessions' posteriors (plus `prior_strength` sessions of the global shares); the
posterior adds the likelihood of the current session's views. The ranker's features
(`topic_features`): the probability that the topic is the ad's subtopic, the expected affinity
of the topic to the ad's subtopic (log T[t, s] - log size_s, centred, / tau: an estimate of
<intent, subtopic centroid> read off the view model), and the content dot product of the ad with
the expected topic centroid — each under the prior and under the posterior.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gpr.eval.history import SPLIT_CODE, TYPE_CODE, Journeys

# the one definition of a session for the cascade's features (features.session_views uses it)
SESSION_SECONDS = 1800  # a gap longer than this between organic views starts a new session
SESSION_BUCKET = 1 + int(np.log2(1 + SESSION_SECONDS))  # gap buckets of the current session
WINDOW = 2**SESSION_BUCKET - 1  # views younger than this fall in those buckets
N_TOPIC = 6  # width of topic_features


def _sessions(jour: Journeys, subtopic: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Organic rows, their session number (rows are sorted by user, then time) and subtopic."""
    rows = np.nonzero(jour.ttype == TYPE_CODE["O"])[0]
    u, ts = jour.user[rows], jour.ts[rows]
    new = np.r_[True, (u[1:] != u[:-1]) | (ts[1:] - ts[:-1] > SESSION_SECONDS)]
    return rows, np.cumsum(new) - 1, subtopic[jour.item[rows] + 1] - 1


def _counts(sess: np.ndarray, sub: np.ndarray, n_sub: int) -> np.ndarray:
    c = np.zeros((int(sess.max()) + 1 if len(sess) else 0, n_sub), np.float32)
    np.add.at(c, (sess, sub), 1.0)
    return c


def _posterior(log_lik: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    lp = log_lik + log_prior
    lp -= lp.max(1, keepdims=True)
    r = np.exp(lp)
    return r / r.sum(1, keepdims=True)


@dataclass
class SessionTopics:
    log_t: np.ndarray  # (S, S) log P(view subtopic s | topic t)
    share: np.ndarray  # (S,) global topic shares
    affinity: np.ndarray  # (S, S) estimate of <topic t, subtopic s>
    centroid: np.ndarray  # (S, E) mean content embedding of each subtopic's organic items
    prior_strength: float
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def fit(
        cls,
        jour: Journeys,
        subtopic: np.ndarray,
        content: np.ndarray,
        organic_rows: np.ndarray,
        iters: int = 30,
        tau: float = 4.0,
        init_tau: float = 8.0,
        smoothing: float = 0.1,
        prior_strength: float = 1.0,
    ) -> SessionTopics:
        """EM on the train days' sessions. subtopic / content: per item row (item id + 1, 0 pad;
        subtopic + 1); organic_rows: the item rows of the organic catalogue."""
        n_sub = int(subtopic.max())
        sub_o = subtopic[organic_rows] - 1
        size = np.bincount(sub_o, minlength=n_sub).astype(np.float64) + 1.0
        centroid = np.zeros((n_sub, content.shape[1]))
        np.add.at(centroid, sub_o, content[organic_rows])
        centroid /= size[:, None]
        rows, sess, sub = _sessions(jour, subtopic)
        train = jour.split[rows] == SPLIT_CODE["train"]
        _, sess_t = np.unique(sess[train], return_inverse=True)
        counts = _counts(sess_t, sub[train], n_sub).astype(np.float64)
        users = np.zeros(len(counts), np.int64)
        users[sess_t] = jour.user[rows[train]]
        _, users = np.unique(users, return_inverse=True)
        unit = centroid / np.maximum(np.linalg.norm(centroid, axis=1, keepdims=True), 1e-12)
        log_t = init_tau * unit @ unit.T + np.log(size)[None]
        log_t -= np.logaddexp.reduce(log_t, axis=1, keepdims=True)
        pi = np.full((users.max() + 1, n_sub), 1.0 / n_sub)
        share = pi[0]
        for _ in range(iters):
            r = _posterior(counts @ log_t.T, np.log(pi[users] + 1e-12))
            t = r.T @ counts + smoothing
            log_t = np.log(t / t.sum(1, keepdims=True))
            per_user = np.zeros_like(pi)
            np.add.at(per_user, users, r)
            share = r.mean(0)
            pi = (per_user + prior_strength * share) / (
                per_user.sum(1, keepdims=True) + prior_strength
            )
        aff = log_t - np.log(size)[None]
        aff = (aff - aff.mean(1, keepdims=True)) / tau
        return cls(
            log_t=log_t.astype(np.float32),
            share=share.astype(np.float32),
            affinity=aff.astype(np.float32),
            centroid=centroid.astype(np.float32),
            prior_strength=prior_strength,
        )

    @property
    def n(self) -> int:
        return len(self.share)

    def _history(self, jour: Journeys, subtopic: np.ndarray) -> dict[str, Any]:
        """Per session of `jour` (cached for the last journeys seen): sort key, and cumulative
        posteriors. Each session's posterior uses the prior of the user's earlier sessions, so
        a user's topics sharpen as their history grows (a sequential Bayes filter)."""
        if self._cache.get("jour") is not jour:
            rows, sess, sub = _sessions(jour, subtopic)
            ll = _counts(sess, sub, self.n) @ self.log_t.T  # (n_sessions, S)
            last = np.zeros(len(ll), np.int64)
            last[sess] = rows  # the session's last row (rows ascend)
            user = jour.user[last].astype(np.int64)
            first = np.r_[True, user[1:] != user[:-1]]
            rank = np.arange(len(user)) - np.maximum.accumulate(
                np.where(first, np.arange(len(user)), 0)
            )
            r = np.zeros_like(ll, dtype=np.float64)
            seen = np.zeros((int(user.max()) + 1 if len(user) else 0, self.n))
            for k in range(int(rank.max()) + 1 if len(rank) else 0):  # k-th session of each user
                idx = np.nonzero(rank == k)[0]
                u = user[idx]
                prior = (seen[u] + self.prior_strength * self.share) / (k + self.prior_strength)
                r[idx] = _posterior(ll[idx], np.log(prior + 1e-12))
                seen[u] += r[idx]
            key = user * (1 << 40) + jour.ts[last].astype(np.int64)
            cum = np.zeros((len(r) + 1, self.n), np.float64)
            np.cumsum(r, axis=0, out=cum[1:])
            self._cache = {"jour": jour, "key": key, "cum": cum}
        return self._cache

    def prior(self, jour: Journeys, subtopic: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """(B, S) topic prior of the requests at E rows `pos`: the user's sessions that ended
        before the current-session window."""
        h = self._history(jour, subtopic)
        user = jour.user[pos].astype(np.int64) * (1 << 40)
        lo = np.searchsorted(h["key"], user, side="left")
        hi = np.searchsorted(h["key"], user + jour.ts[pos].astype(np.int64) - WINDOW, side="right")
        hi = np.maximum(hi, lo)
        seen = h["cum"][hi] - h["cum"][lo]
        p = (seen + self.prior_strength * self.share) / (
            seen.sum(1, keepdims=True) + self.prior_strength
        )
        return p.astype(np.float32)


def topic_features(
    log_prior: torch.Tensor,
    view_sub: torch.Tensor,
    views: torch.Tensor,
    ad_sub: torch.Tensor,
    ad_content: torch.Tensor,
    log_t: torch.Tensor,
    affinity: torch.Tensor,
    centroid: torch.Tensor,
) -> torch.Tensor:
    """(B, K, N_TOPIC). log_prior (B, S); view_sub (B, L) subtopics (0-based) of the history with
    `views` (B, L) marking the current session's; ad_sub (B, K) 0-based; ad_content (B, K, E)."""
    ll = (log_t.T[view_sub.clamp(min=0)] * views[..., None]).sum(1)  # (B, S)
    out = []
    for logp in (log_prior, log_prior + ll):
        p = torch.softmax(logp, -1)  # (B, S)
        out += [
            p.gather(1, ad_sub),
            torch.einsum("bs,bks->bk", p, affinity.T[ad_sub]),
            torch.einsum("be,bke->bk", p @ centroid, ad_content),
        ]
    return torch.stack(out, -1)

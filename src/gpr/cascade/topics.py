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

from gpr.market.journeys import SPLIT_CODE, TYPE_CODE, Journeys

# the one definition of a session for the cascade's features (features.session_views uses it)
SESSION_SECONDS = 1800  # a gap longer than this between organic views starts a new session
SESSION_BUCKET = 1 + int(np.log2(1 + SESSION_SECONDS))  # gap buckets of the current session
WINDOW = 2**SESSION_BUCKET - 1  # views younger than this fall in those buckets
N_TOPIC = 6  # width of topic_features


def _sessions(
    jour: Journeys, subtopic: np.ndarray, gap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Organic rows, their session number (rows are sorted by user, then time; a pause longer
    than `gap` seconds starts a session) and subtopic."""
    rows = np.nonzero(jour.ttype == TYPE_CODE["O"])[0]
    u, ts = jour.user[rows], jour.ts[rows]
    new = np.r_[True, (u[1:] != u[:-1]) | (ts[1:] - ts[:-1] > gap)]
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
    half_life_days: float = 0.0  # > 0: earlier sessions' weight halves every this many days
    session_gap: int = SESSION_SECONDS  # a longer pause between views starts a session
    window: int = WINDOW  # the prior counts the sessions that ended this long before a request
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
        em_strength: float = 1.0,
        prior_strength: float = 1.0,
        half_life_days: float = 0.0,
        session_gap: int = 0,
    ) -> SessionTopics:
        """EM on the train days' sessions. subtopic / content: per item row (item id + 1, 0 pad;
        subtopic + 1); organic_rows: the item rows of the organic catalogue. em_strength: the
        pseudo-sessions of global shares in each user's shares during EM; prior_strength and
        half_life_days: the same, and the forgetting, of the request-time filter (`prior`).
        session_gap: seconds of pause that end a session (0: the legacy SESSION_SECONDS, with the
        current session taken as the views of the last WINDOW seconds)."""
        window = session_gap + 1 if session_gap > 0 else WINDOW  # ended > gap before: not current
        session_gap = session_gap if session_gap > 0 else SESSION_SECONDS
        n_sub = int(subtopic.max())
        sub_o = subtopic[organic_rows] - 1
        size = np.bincount(sub_o, minlength=n_sub).astype(np.float64) + 1.0
        centroid = np.zeros((n_sub, content.shape[1]))
        np.add.at(centroid, sub_o, content[organic_rows])
        centroid /= size[:, None]
        rows, sess, sub = _sessions(jour, subtopic, session_gap)
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
            pi = (per_user + em_strength * share) / (per_user.sum(1, keepdims=True) + em_strength)
        aff = log_t - np.log(size)[None]
        aff = (aff - aff.mean(1, keepdims=True)) / tau
        return cls(
            log_t=log_t.astype(np.float32),
            share=share.astype(np.float32),
            affinity=aff.astype(np.float32),
            centroid=centroid.astype(np.float32),
            prior_strength=prior_strength,
            half_life_days=half_life_days,
            session_gap=session_gap,
            window=window,
        )

    @property
    def n(self) -> int:
        return len(self.share)

    def _decay(self, seconds: np.ndarray) -> np.ndarray:
        """Weight left to evidence `seconds` old (1 without forgetting)."""
        if self.half_life_days <= 0:
            return np.ones_like(seconds, dtype=np.float64)
        return np.exp2(-np.maximum(seconds, 0) / (86400.0 * self.half_life_days))

    def _history(self, jour: Journeys, subtopic: np.ndarray) -> dict[str, Any]:
        """Per session of `jour` (cached for the last journeys seen): sort key, end time and the
        user's evidence after it (the sum of their sessions' posteriors so far, each decayed by
        its age). Each session's posterior uses the prior of the user's earlier sessions, so a
        user's topics sharpen as their history grows (a sequential Bayes filter); with a half
        life, old sessions fade, so an interest that was replaced stops counting."""
        if self._cache.get("jour") is not jour:
            rows, sess, sub = _sessions(jour, subtopic, self.session_gap)
            ll = _counts(sess, sub, self.n) @ self.log_t.T  # (n_sessions, S)
            last = np.zeros(len(ll), np.int64)
            last[sess] = rows  # the session's last row (rows ascend)
            user = jour.user[last].astype(np.int64)
            ts = jour.ts[last].astype(np.int64)
            first = np.r_[True, user[1:] != user[:-1]]
            rank = np.arange(len(user)) - np.maximum.accumulate(
                np.where(first, np.arange(len(user)), 0)
            )
            state = np.zeros((len(ll), self.n), np.float64)
            n_users = int(user.max()) + 1 if len(user) else 0
            seen = np.zeros((n_users, self.n))
            seen_ts = np.zeros(n_users, np.int64)
            for k in range(int(rank.max()) + 1 if len(rank) else 0):  # k-th session of each user
                idx = np.nonzero(rank == k)[0]
                u = user[idx]
                seen[u] *= self._decay(ts[idx] - seen_ts[u])[:, None]
                seen_ts[u] = ts[idx]
                r = _posterior(ll[idx], np.log(self._normalise(seen[u]) + 1e-12))
                seen[u] += r
                state[idx] = seen[u]
            self._cache = {"jour": jour, "key": user * (1 << 40) + ts, "ts": ts, "state": state}
        return self._cache

    def _normalise(self, seen: np.ndarray) -> np.ndarray:
        """Topic shares from evidence (B, S), shrunk to the global shares."""
        return (seen + self.prior_strength * self.share) / (
            seen.sum(1, keepdims=True) + self.prior_strength
        )

    def prior(self, jour: Journeys, subtopic: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """(B, S) topic prior of the requests at E rows `pos`: the user's sessions that ended
        before the current-session window."""
        h = self._history(jour, subtopic)
        user = jour.user[pos].astype(np.int64) * (1 << 40)
        now = jour.ts[pos].astype(np.int64)
        lo = np.searchsorted(h["key"], user, side="left")
        hi = np.searchsorted(h["key"], user + now - self.window, side="right")
        has = hi > lo  # the user's last session that ended before the current one: hi - 1
        seen = np.zeros((len(pos), self.n))
        last = hi[has] - 1
        seen[has] = h["state"][last] * self._decay(now[has] - h["ts"][last])[:, None]
        return self._normalise(seen).astype(np.float32)


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

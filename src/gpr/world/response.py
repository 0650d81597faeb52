"""The hidden ground-truth response model, shared by the generator, the logging cascade and Truth.

pCTR logit = ctr_bias + ctr_session<v_ad, z_session> + ctr_long<v_ad, u> + q - ctr_slot(slot-1)
             + scene_bias[scene] + device_bias[device]
pCVR logit = cvr_bias + cvr_long<v_ad, u> - sensitivity(log price - 3.5) + q_conv
"""

from __future__ import annotations

import numpy as np

from gpr.core.config import WorldConfig

PRICE_LOG_MEAN = 3.5


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, 1e-12)


def long_term_vectors(
    sub_centroid: np.ndarray, interests: np.ndarray, weights: np.ndarray, offset: np.ndarray
) -> np.ndarray:
    """u = normalize(sum_k w_k c_{s_k} + offset), interests (U, 4) with -1 padding."""
    valid = interests >= 0
    c = sub_centroid[np.where(valid, interests, 0)]  # (U, 4, d)
    w = (weights * valid)[..., None]
    return normalize((w * c).sum(axis=1) + offset).astype(np.float32)


def session_latent(sub_centroid: np.ndarray, topic: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The session intent z = normalize(c_topic + the user's offset)."""
    return normalize(sub_centroid[topic] + offset).astype(np.float32)


def view_subtopic_logits(
    cfg: WorldConfig, sub_centroid: np.ndarray, organic_subtopic: np.ndarray, z: np.ndarray
) -> np.ndarray:
    """(Q, S) logits of the subtopic of an organic view under session intents z (Q, d):
    organic_temperature <z, c_s> + log(organic items in s); -inf for empty subtopics."""
    counts = np.bincount(organic_subtopic, minlength=len(sub_centroid))
    logit = cfg.organic_temperature * (z @ sub_centroid.T) + np.log(np.maximum(counts, 1))[None, :]
    return np.where(counts[None, :] > 0, logit, -np.inf)


def ctr_logit_static(
    cfg: WorldConfig,
    affinity_long: np.ndarray,
    quality: np.ndarray,
    slot: np.ndarray,
    scene: np.ndarray,
    device: np.ndarray,
) -> np.ndarray:
    """The pCTR logit without the session term (what the logging ranker estimates)."""
    scene_b = np.asarray(cfg.scene_bias)[scene]
    device_b = np.asarray(cfg.device_bias)[device]
    return (
        cfg.ctr_bias
        + cfg.ctr_long * affinity_long
        + quality
        - cfg.ctr_slot * (slot - 1)
        + scene_b
        + device_b
    )


def ctr_logit(
    cfg: WorldConfig,
    affinity_session: np.ndarray,
    affinity_long: np.ndarray,
    quality: np.ndarray,
    slot: np.ndarray,
    scene: np.ndarray,
    device: np.ndarray,
) -> np.ndarray:
    static = ctr_logit_static(cfg, affinity_long, quality, slot, scene, device)
    return static + cfg.ctr_session * affinity_session


def cvr_logit(
    cfg: WorldConfig,
    affinity_long: np.ndarray,
    sensitivity: np.ndarray,
    log_price: np.ndarray,
    q_conv: np.ndarray,
) -> np.ndarray:
    return (
        cfg.cvr_bias
        + cfg.cvr_long * affinity_long
        - sensitivity * (log_price - PRICE_LOG_MEAN)
        + q_conv
    )

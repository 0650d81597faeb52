"""The hidden ground truth of a generated world. Only evaluation may use it (never training or RL).

    truth = Truth.load(DIR)
    truth.pctr(request_ids, ad_item_ids)   # true click probability of showing that ad there
    truth.pcvr(request_ids, ad_item_ids)   # true conversion probability given a click
    truth.value(request_ids, ad_item_ids)  # expected revenue = bid * pCTR * pCVR

A request id fixes the user, the day, the environment (scene, slot, device) and the hidden session
intent. `ad_item_ids` may be (B,) or (B, K): every request is scored against its K candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from safetensors.numpy import save_file

from gpr.core.config import WorldConfig
from gpr.core.errors import GprInputError
from gpr.core.io import read_json, read_tensors, write_json
from gpr.data.schema import read_table
from gpr.world.entities import Catalog, Population
from gpr.world.response import (
    ctr_logit,
    cvr_logit,
    long_term_vectors,
    session_latent,
    sigmoid,
)

LATENTS = (
    "ad_q_conv",
    "ad_quality",
    "item_latent",
    "sub_centroid",
    "user_interests",
    "user_offset",
    "user_sensitivity",
    "user_weights",
)  # latents.safetensors

REQUESTS = {
    "request_id": pa.int64(),
    "user_id": pa.int64(),
    "day": pa.int16(),
    "slot": pa.int8(),
    "scene": pa.int8(),
    "device": pa.int8(),
    "session_subtopic": pa.int16(),
}


def save_truth(out: Path, cfg: WorldConfig, cat: Catalog, pop: Population) -> None:
    """Write DIR/truth/{params.json, latents.safetensors}; requests.parquet is streamed."""
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "sub_centroid": cat.sub_centroid,
            "item_latent": cat.latent,
            "ad_quality": cat.quality.astype(np.float32),
            "ad_q_conv": cat.q_conv.astype(np.float32),
            "user_interests": pop.interests,
            "user_weights": pop.weights,
            "user_offset": pop.offset,
            "user_sensitivity": pop.sensitivity.astype(np.float32),
        },
        str(out / "latents.safetensors"),
    )
    write_json(
        out / "params.json", {"world": cfg.model_dump(mode="json"), "n_organic": cat.n_organic}
    )


@dataclass
class Truth:
    cfg: WorldConfig
    n_organic: int
    sub_centroid: np.ndarray
    item_latent: np.ndarray
    quality: np.ndarray
    q_conv: np.ndarray
    interests: np.ndarray
    weights: np.ndarray
    offset: np.ndarray
    sensitivity: np.ndarray
    bid: np.ndarray  # per ad index
    log_price: np.ndarray
    req_user: np.ndarray  # indexed by request id
    req_day: np.ndarray
    req_slot: np.ndarray
    req_scene: np.ndarray
    req_device: np.ndarray
    req_topic: np.ndarray

    @classmethod
    def load(cls, root: str | Path) -> Truth:
        root = Path(root)
        tdir = root / "truth"
        params = read_json(tdir / "params.json")
        lat_path = tdir / "latents.safetensors"
        lat = {k: v.numpy() for k, v in read_tensors(lat_path).items()}
        missing = sorted(set(LATENTS) - set(lat))
        if missing:
            raise GprInputError("a latent is missing", file=lat_path, field=missing[0])
        req = read_table(tdir / "requests.parquet", REQUESTS)
        rid = req.column("request_id").to_numpy()
        if not np.array_equal(rid, np.arange(len(rid))):
            raise GprInputError(
                "request ids must be 0..n-1 in order",
                file=tdir / "requests.parquet",
                field="request_id",
            )
        items = read_table(
            root / "items.parquet",
            {"item_id": pa.int64(), "bid": pa.float64(), "price": pa.float64()},
        )
        n_org = int(params["n_organic"])
        bid = items.column("bid").to_numpy()[n_org:]
        price = items.column("price").to_numpy()[n_org:]
        col = {k: req.column(k).to_numpy().astype(np.int64) for k in REQUESTS}
        return cls(
            cfg=WorldConfig.model_validate(params["world"]),
            n_organic=n_org,
            sub_centroid=lat["sub_centroid"],
            item_latent=lat["item_latent"],
            quality=lat["ad_quality"].astype(np.float64),
            q_conv=lat["ad_q_conv"].astype(np.float64),
            interests=lat["user_interests"],
            weights=lat["user_weights"],
            offset=lat["user_offset"],
            sensitivity=lat["user_sensitivity"].astype(np.float64),
            bid=bid,
            log_price=np.log(price),
            req_user=col["user_id"],
            req_day=col["day"],
            req_slot=col["slot"],
            req_scene=col["scene"],
            req_device=col["device"],
            req_topic=col["session_subtopic"],
        )

    @property
    def n_requests(self) -> int:
        return len(self.req_user)

    def _ad_index(self, ad_item_ids: np.ndarray) -> np.ndarray:
        a = np.asarray(ad_item_ids, dtype=np.int64) - self.n_organic
        if a.size and (a.min() < 0 or a.max() >= len(self.bid)):
            bad = np.asarray(ad_item_ids).ravel()[
                np.argmax(((a < 0) | (a >= len(self.bid))).ravel())
            ]
            raise GprInputError(f"item {bad} is not an ad of this world", field="item_id")
        return a

    def _request_index(self, request_ids: np.ndarray) -> np.ndarray:
        r = np.asarray(request_ids, dtype=np.int64)
        if r.size and (r.min() < 0 or r.max() >= self.n_requests):
            raise GprInputError("unknown request id", field="request_id")
        return r

    def long_term(self, users: np.ndarray, days: np.ndarray) -> np.ndarray:
        d = np.clip(days, 0, self.interests.shape[0] - 1)
        return long_term_vectors(
            self.sub_centroid, self.interests[d, users], self.weights[users], self.offset[users]
        )

    def _parts(self, request_ids: np.ndarray, ad_item_ids: np.ndarray) -> tuple[np.ndarray, ...]:
        r = self._request_index(request_ids)
        a = self._ad_index(ad_item_ids)
        if a.ndim == r.ndim + 1:
            r = r[..., None]
        r = np.broadcast_to(r, a.shape)
        users = self.req_user[r]
        u = self.long_term(users.ravel(), self.req_day[r].ravel()).reshape(*a.shape, -1)
        z = session_latent(self.sub_centroid, self.req_topic[r].ravel(), self.offset[users.ravel()])
        v = self.item_latent[a + self.n_organic]
        a_long = np.einsum("...d,...d->...", u, v)
        a_sess = np.einsum("...d,...d->...", z.reshape(*a.shape, -1), v)
        return r, a, users, a_long, a_sess

    def ctr_terms(self, request_ids: np.ndarray, ad_item_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The additive terms of the true pCTR logit (response.py), for diagnostics: `session`,
        `long`, `quality`, `slot`, `env` and the constant `bias`; their sum is the logit
        (tests/test_world.py checks it against `pctr`)."""
        r, a, _, a_long, a_sess = self._parts(request_ids, ad_item_ids)
        cfg = self.cfg
        env = np.asarray(cfg.scene_bias)[self.req_scene[r]]
        return {
            "session": cfg.ctr_session * a_sess,
            "long": cfg.ctr_long * a_long,
            "quality": self.quality[a],
            "slot": -cfg.ctr_slot * (self.req_slot[r] - 1),
            "env": env + np.asarray(cfg.device_bias)[self.req_device[r]],
            "bias": np.full(a.shape, cfg.ctr_bias),
        }

    def pctr(self, request_ids: np.ndarray, ad_item_ids: np.ndarray) -> np.ndarray:
        r, a, _, a_long, a_sess = self._parts(request_ids, ad_item_ids)
        logit = ctr_logit(
            self.cfg,
            a_sess,
            a_long,
            self.quality[a],
            self.req_slot[r],
            self.req_scene[r],
            self.req_device[r],
        )
        return sigmoid(logit)

    def pcvr(self, request_ids: np.ndarray, ad_item_ids: np.ndarray) -> np.ndarray:
        _, a, users, a_long, _ = self._parts(request_ids, ad_item_ids)
        return sigmoid(
            cvr_logit(self.cfg, a_long, self.sensitivity[users], self.log_price[a], self.q_conv[a])
        )

    def value(self, request_ids: np.ndarray, ad_item_ids: np.ndarray) -> np.ndarray:
        """Expected revenue of showing the ad: bid * pCTR * pCVR (oCPA, billed at the bid)."""
        a = self._ad_index(ad_item_ids)
        return (
            self.bid[a] * self.pctr(request_ids, ad_item_ids) * self.pcvr(request_ids, ad_item_ids)
        )

"""Configuration: pydantic models, YAML presets (tiny/small/base/large), file + CLI overrides.

A config is built as: defaults <- preset YAML <- user YAML file (which may name a preset) <- CLI
`--set section.field=value` overrides. Unknown or ill-typed fields raise GprInputError naming the
field, so the CLI exits 2 before anything is written.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpr.core.errors import GprInputError

PRESETS = ("tiny", "small", "base", "large")
NUMBERS = (int, float, int | None, float | None)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        """YAML's `true` is not a number (pydantic would read `epochs: true` as 1)."""
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and field.annotation in NUMBERS:
                    raise ValueError(f"{name}: expected a number, got {value!r}")
        return data


class WorldConfig(_Strict):
    """The simulated ad world (docs/world.md explains every field)."""

    n_users: int = Field(5000, ge=10)
    n_organic: int = Field(20000, ge=10)
    n_ads: int = Field(3000, ge=10)
    n_advertisers: int = Field(300, ge=1)
    n_days: int = Field(14, ge=3)
    valid_days: int = Field(1, ge=1)
    test_days: int = Field(1, ge=1)
    # latent space and taxonomy
    latent_dim: int = Field(32, ge=4)
    embed_dim: int = Field(64, ge=4)
    n_categories: int = Field(12, ge=2, le=12)
    n_subtopics: int = Field(8, ge=1, le=8)
    subtopic_noise: float = Field(0.8, ge=0)
    item_noise: float = Field(0.6, ge=0)
    embed_noise: float = Field(0.15, ge=0)
    ad_embed_offset: float = Field(0.1, ge=0)
    # ads
    ads_initial_share: float = Field(0.7, gt=0, le=1)
    margin_low: float = Field(0.1, gt=0)
    margin_high: float = Field(0.4, gt=0)
    targeted_share: float = Field(0.4, ge=0, le=1)
    quality_sd: float = Field(0.3, ge=0)
    min_lifespan_days: int = Field(3, ge=1)
    max_lifespan_days: int = Field(120, ge=1)
    budget_conversions: float = Field(0.3, gt=0)
    budget_sigma: float = Field(1.0, ge=0)
    # users and sessions
    tier_probs: tuple[float, float, float] = (0.55, 0.33, 0.12)
    sessions_per_day: tuple[float, float, float] = (0.5, 2.0, 6.0)
    extra_interests_mean: float = Field(1.2, ge=0)
    max_interests: int = Field(4, ge=1, le=4)
    user_offset_norm: float = Field(0.3, ge=0)
    drift_prob: float = Field(0.05, ge=0, le=1)
    demographic_shift: float = Field(0.7, ge=0)
    views_per_session: float = Field(8.0, ge=1)
    max_views_per_session: int = Field(40, ge=1)
    views_per_request: float = Field(4.0, ge=1)
    max_slots: int = Field(5, ge=1)
    organic_temperature: float = Field(4.0, ge=0)
    # hidden ground-truth response
    ctr_bias: float = -5.3
    ctr_session: float = 2.0
    ctr_long: float = 1.0
    ctr_slot: float = 0.35
    scene_bias: tuple[float, float, float] = (0.0, -0.3, -0.6)
    device_bias: tuple[float, float, float] = (0.0, 0.1, -0.2)
    cvr_bias: float = -3.2
    cvr_long: float = 1.2
    cvr_quality_sd: float = Field(0.3, ge=0)
    # the logging cascade
    retrieval_k: int = Field(200, ge=1)
    profile_lag_days: int = Field(3, ge=0)
    profile_noise: float = Field(0.3, ge=0)
    explore_share: float = Field(0.05, ge=0, le=1)
    rank_noise: float = Field(0.2, ge=0)
    reserve_share: float = Field(0.1, ge=0, le=1)
    budget_chunk: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> WorldConfig:
        if self.n_days <= self.valid_days + self.test_days:
            raise ValueError("n_days must leave at least one train day after valid and test days")
        if self.min_lifespan_days > self.max_lifespan_days:
            raise ValueError("min_lifespan_days must not exceed max_lifespan_days")
        if self.margin_low > self.margin_high:
            raise ValueError("margin_low must not exceed margin_high")
        if min(self.tier_probs) < 0 or abs(sum(self.tier_probs) - 1) > 1e-6:
            raise ValueError("tier_probs must be non-negative and sum to 1")
        return self


class TokenizerConfig(_Strict):
    """Semantic-ID tokenizers (RQ-Kmeans, RQ-VAE, RQ-Kmeans+)."""

    method: Literal["rq_kmeans", "rq_vae", "rq_kmeans_plus"] = "rq_kmeans_plus"
    levels: int = Field(3, ge=1, le=8)
    codebook_size: int = Field(256, ge=2)
    latent_dim: int = Field(32, ge=2)  # RQ-VAE's latent
    plus_latent_dim: int | None = Field(None, ge=2)  # RQ-Kmeans+; None: the input dimension
    hidden_dims: list[int] = [256, 128]
    beta: float = Field(0.25, ge=0)
    epochs: int = Field(50, ge=0)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-3, gt=0)
    kmeans_iters: int = Field(25, ge=1)
    balanced: bool = False
    # collaborative part of the item vector (tokenizer/collab.py): PPMI-SVD rank, 0 = content only
    collab_dim: int = Field(0, ge=0)
    collab_weight: float = Field(1.0, gt=0)
    collab_window: int = Field(3, ge=1)
    device: str = "auto"


class ItemHeadConfig(_Strict):
    """A dense per-item score beside the SID decoder (model/item_head.py), trained with a full
    softmax over the catalogue. At generation the beam plus the head's top `widen` items are
    ranked by log p_SID + alpha · log p_head."""

    weight: float = Field(1.0, ge=0)  # its loss weight
    alpha: float = Field(1.0, ge=0)
    widen: int = Field(50, ge=0)
    # K > 0: the logits add beta · content cosine to the K nearest neighbours of the user's last
    # item (beta learnt, starting here); needs a content table
    neighbours: int = Field(0, ge=0)
    beta: float = Field(10.0, gt=0)


class ModelConfig(_Strict):
    """The HHD (and the HSTU baseline: every component off, one head)."""

    d_model: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_len: int = Field(128, ge=8)
    hybrid_attention: bool = True
    token_aware_ln: bool = True
    token_aware_ffn: bool = True
    mor_extra: int = Field(2, ge=0, le=3)
    thought_tokens: int = Field(3, ge=0)
    thinking_tokens: int = Field(4, ge=0)
    refining: bool = True
    refine_steps: int = Field(4, ge=1)
    hte: bool = True
    # HTE's wide part on candidate features (model/hte.py; only `--stage hte` trains it): "side"
    # = price, bid, age and the user's price level; "session" (needs "side") = the current
    # session's organic views in the ad's subtopic / category
    hte_features: list[Literal["side", "session"]] = []
    decoder_layers: int = Field(1, ge=1)
    recent_window: int = Field(16, ge=1)
    mtp_heads: int = Field(4, ge=1)
    mtp_weights: list[float] | None = None
    diffusion_weight: float = Field(0.1, ge=0)
    hte_weight: float = Field(0.5, ge=0)
    # what an O/I input token carries: its semantic ID, and optionally the item's content embedding
    # (what the tokenizer encodes) through a linear map, which exists for unseen items too
    inputs: list[Literal["sid", "content"]] = ["sid"]
    # the content table behind the content input and the item head: "text" = the text embedding;
    # "tokenizer" = exactly what the SIDs were built from (text + the train-split collaborative
    # vector when the tokenizer had collab_dim > 0; read from the SID dir's tokenizer.json)
    content_source: Literal["text", "tokenizer"] = "text"
    # HSTU's temporal attention bias (model/hsd.py): a learned per-head bias by the log2 bucket of
    # the seconds between two events, so attention can weigh events by their age
    time_bias: bool = False
    # a dense score per item beside the SID decoder; None = none (`model.item_head=true` sets
    # the defaults)
    item_head: ItemHeadConfig | None = None

    @field_validator("item_head", mode="before")
    @classmethod
    def _head_switch(cls, v: Any) -> Any:
        return ({} if v else None) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.d_model % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide d_model ({self.d_model})")
        if "sid" not in self.inputs:
            raise ValueError("inputs must include 'sid' (outputs are semantic IDs)")
        if "session" in self.hte_features and "side" not in self.hte_features:
            raise ValueError("hte_features 'session' needs 'side'")
        return self

    @property
    def content_input(self) -> bool:
        return "content" in self.inputs

    @property
    def hte_side(self) -> bool:
        return "side" in self.hte_features

    @property
    def hte_session(self) -> bool:
        return "session" in self.hte_features


class TrainConfig(_Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0)
    patience: int = Field(3, ge=1)
    eval_every: int = Field(1, ge=1)
    beam: int = Field(100, ge=1)
    max_eval_requests: int | None = None
    # wall-clock budget: stop after the epoch that crosses it (the LR schedule still spans `epochs`)
    max_seconds: float | None = Field(None, gt=0)
    device: str = "auto"
    # MTP: one optimiser step per N micro-batches of batch_size (gradient accumulation)
    accumulate: int = Field(1, ge=1)
    # MTP: write RUN.ckpt every N optimiser steps for `gpr train --resume RUN` (0: never)
    checkpoint_every: int = Field(500, ge=0)


class RuntimeConfig(_Strict):
    """How a command uses the machine."""

    # torch intra-op and BLAS threads of every command (None: the libraries' defaults, all
    # cores). One thread is much faster than two on a small, shared CPU: numpy's idle OpenBLAS
    # workers spin (docs/benchmarks.md)
    threads: int | None = Field(1, ge=1)


class CascadeConfig(_Strict):
    """The multi-stage cascade baseline (two-tower retrieval, ranking, auction)."""

    # features
    n_hist_organic: int = Field(20, ge=1)  # last organic items before the request
    n_hist_ads: int = Field(20, ge=1)  # last shown ads (with their actions)
    n_long: int = Field(100, ge=1)  # organic items of the long-term profile
    # sizes
    dim: int = Field(32, ge=4)  # embedding width
    hidden: int = Field(128, ge=4)  # MLP width
    heads: int = Field(2, ge=1)  # target-attention heads
    id_dropout: float = Field(0.2, ge=0, le=1)  # drop ad ids so content carries new ads
    dropout: float = Field(0.0, ge=0, lt=1)  # on the ranking MLP's hidden layers
    deep: bool = True  # the ranking's deep part (False: wide + env biases only, a GLM)
    wide_epochs: int = Field(12, ge=1)  # stage 1: the wide part alone (cheap)
    # session topics (topics.py): an EM mixture over the subtopics of organic sessions gives the
    # ranker the current session's intent subtopic (N_TOPIC more wide features)
    session_topics: bool = True
    # the request-time topic prior: pseudo-sessions of the global shares, and the half life (days;
    # 0 = none) of earlier sessions' evidence; chosen on the valid day (docs/results/business.md)
    topic_prior_strength: float = Field(0.1, gt=0)
    topic_half_life_days: float = Field(2.0, ge=0)
    # a pause longer than this ends a session (market.sessions.SESSION_GAP_SECONDS, tested equal);
    # 0 = the earlier rule (split at 1,800 s, the current session = the views of the last 2,047 s)
    session_gap_seconds: int = Field(300, ge=0)
    # ranking training
    epochs: int = Field(6, ge=1)  # stage 2: wide + deep
    patience: int = Field(2, ge=1)  # early stop on valid AUC
    batch_size: int = Field(1024, ge=8)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    ctcvr_weight: float = Field(1.0, ge=0)  # ESMM: BCE(pCTR * pCVR, conversion) on impressions
    cvr_weight: float = Field(1.0, ge=0)  # BCE(pCVR, conversion) on clicked impressions
    # retrieval
    retrieval_epochs: int = Field(3, ge=1)
    retrieval_dim: int = Field(32, ge=4)
    temperature: float = Field(0.1, gt=0)
    click_weight: float = Field(4.0, ge=0)  # extra loss weight of clicked positives
    min_positives: int = Field(20000, ge=0)  # below this many clicks, impressions join them
    retrieval_k: int = Field(200, ge=1)
    max_train_impressions: int | None = Field(None, ge=1)  # cap (newest kept), for quick runs


class AlignConfig(_Strict):
    """Value alignment (spec §4.2-4.4): VAFT, DPO, HEPO and ARR (docs/alignment.md)."""

    # VAFT (its epochs, lr and batch size are the `train` section's)
    vaft_weights: Literal["paper", "simple"] = "paper"
    vaft_clip: tuple[float, float] = (0.1, 10.0)
    # rollouts shared by DPO and HEPO
    steps: int = Field(200, ge=1)  # policy updates (one rollout batch each)
    requests_per_step: int = Field(32, ge=1)
    candidates: int = Field(40, ge=2)  # K per request, split evenly over the MTP heads
    temperature: float = Field(1.0, gt=0)
    lr: float = Field(1e-4, gt=0)
    recent_days: int | None = Field(None, ge=1)  # sample requests of the last N train days only
    eval_every: int = Field(50, ge=1)  # validation (mean simulator value of the top ad)
    eval_requests: int = Field(200, ge=1)
    # sample only among the reference's top-N beam ads per request (where the simulator is
    # calibrated: docs/alignment.md); None = every eligible ad
    candidate_pool: int | None = Field(None, ge=1)
    # the terminal reward: final_value (Eq. 5) or its log. With the log and a KL weight β to the
    # reference, the optimum of E[R] - β KL is π ∝ π_ref · final_value^(1/β) (docs/alignment.md)
    reward: Literal["value", "log_value"] = "value"
    # HEPO's leaf advantage: Eq. 8's z-score of R within the request's K (its spread shrinks as
    # the policy concentrates, so no KL holds it: it collapses onto the argmax), or R minus its
    # mean there (`center`: the optimum above, π_ref · v^(1/β), holds)
    leaf_advantage: Literal["zscore", "center"] = "zscore"
    # which checkpoint is kept: the best mean simulator value of the top ad on valid requests
    # (`top_value`), or the best valid estimate of what HEPO maximises with a log reward,
    # E[R] - kl_weight · KL(π || π_ref) over K sampled candidates (`objective`; a run anchored to
    # a reference other than its init starts with a large KL, so `top_value` would keep step 0)
    select: Literal["top_value", "objective"] = "top_value"
    # DPO
    dpo_beta: float = Field(0.1, gt=0)
    # hard: the higher-valued candidate is always preferred; soft: P(w ≻ l) = σ(log v_w - log v_l),
    # whose optimum is β log(π / π_ref) = log v + c, i.e. π ∝ π_ref · v^(1/β)
    dpo_labels: Literal["hard", "soft"] = "hard"
    # HEPO
    ppo_epochs: int = Field(2, ge=1)
    clip: float = Field(0.2, gt=0)
    gamma: float = Field(1.0, ge=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    process_alpha: list[float] = [0.1, 0.1, 0.1]  # α_l of the semantic levels (Eq. 7)
    level_coef: list[float] | None = None  # c_l per decision (Eq. 9); None: 1 each
    value_weight: float = Field(0.5, ge=0)  # Eq. 10
    kl_weight: float = Field(0.01, ge=0)  # KL to the reference (the init run), 0 = none
    # HTE distillation (`--stage hte`, train/hte_distill.py): train requests, epochs, lr
    hte_requests: int = Field(8192, ge=1)
    hte_epochs: int = Field(40, ge=1)
    hte_lr: float = Field(3e-3, gt=0)
    # ARR
    arr_share: float = Field(0.25, ge=0, le=1)  # share of a HEPO batch that is synthetic
    arr_per_tier: tuple[int, int, int] = (1, 2, 4)  # synthetic requests per user, by tier
    arr_recent: int = Field(8, ge=1)  # anchor on the user's last N train requests


class ServeScore(_Strict):
    """How a generative run ranks the union of its MTP heads' beams (spec §5): by a weighted sum of
    named terms, 0 = a term unused. The default is the model's own order."""

    logp: float = Field(1.0, ge=0)  # log p(ad), the path log-probability
    log_bid: float = Field(0.0, ge=0)  # log bid
    # log(bid x HTE pCTR x HTE pCVR), the model's own expected revenue (needs HTE); alone it is
    # the paper's auction by value
    log_hte_value: float = Field(0.0, ge=0)


class ValueGuide(_Strict):
    """The value-guided dynamic beam (spec §5; needs HTE). At every semantic level the beam keeps
    the candidates best by log p + weight · log v, v the HTE value of the prefix, among the
    2 x beam best by log p: high-value prefixes keep more branches. With `prune` > 0 a prefix
    whose value is below `prune` x the best of its request is dropped early (a narrower beam)."""

    weight: float = Field(1.0, gt=0)
    prune: float = Field(0.0, ge=0, lt=1)


class ServeConfig(_Strict):
    """Serving a generative run (spec §5)."""

    beam: int | None = Field(None, ge=1)  # per MTP head; None: train.beam
    score: ServeScore = Field(default_factory=ServeScore)
    guide: ValueGuide | None = None  # None: the fixed-width beam


class GprConfig(_Strict):
    preset: Literal["tiny", "small", "base", "large"] = "small"
    seed: int = 7
    world: WorldConfig = Field(default_factory=WorldConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    align: AlignConfig = Field(default_factory=AlignConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)


# Fields of earlier configs, by section: the value that meant "off" (ANY: a setting that no longer
# matters). A saved config holding that value loads without the field; any other value is refused,
# since the option is gone (docs/model.md, "Add-ons: kept and retired").
ANY = object()
RETIRED: dict[str, dict[str, Any]] = {
    "model": {"item_ids": False},
    "cascade": {
        "user_id": False,
        "intent": False,
        "threads": ANY,
        **{f"intent_{k}": ANY for k in ("hidden", "epochs", "views", "negatives", "lr")},
    },
    "align": {"support": False, "ad_baseline_requests": ANY},
    "train": {"threads": ANY},
}


HEAD_FIELDS = ("weight", "alpha", "widen", "neighbours", "beta")


def _upgrade_model(m: dict[str, Any]) -> None:
    """Earlier flat model fields -> inputs, item_head and hte_features (in place)."""
    if "content_input" in m:
        inputs = list(m.get("inputs", ["sid"]))
        if m.pop("content_input") and "content" not in inputs:
            inputs.append("content")
        m["inputs"] = inputs
    flat = {k: m.pop(f"item_head_{k}") for k in HEAD_FIELDS if f"item_head_{k}" in m}
    if flat and m.get("item_head") is True:
        m["item_head"] = flat
    elif flat and isinstance(m.get("item_head"), dict):
        m["item_head"] = {**m["item_head"], **flat}
    feats = list(m.get("hte_features", []))
    for key, name in (("hte_side", "side"), ("hte_session", "session")):
        if m.pop(key, False) and name not in feats:
            feats.append(name)
    if feats or "hte_features" in m:
        m["hte_features"] = feats


def upgrade(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config (run.json's `config`) in the current schema: retired fields dropped, the
    earlier serving fields (rank_by, bid_weight, hte_weight) as `serve.score` terms."""
    out = copy.deepcopy(config)
    for section, fields in RETIRED.items():
        data = out.get(section)
        if not isinstance(data, dict):
            continue
        for name, off in fields.items():
            if name in data:
                value = data.pop(name)
                if off is not ANY and value != off:
                    raise GprInputError(
                        f"trained with the retired option {section}.{name}={value!r}",
                        field=f"{section}.{name}",
                    )
    model = out.get("model")
    if isinstance(model, dict):
        _upgrade_model(model)
    serve = out.get("serve")
    if isinstance(serve, dict) and "score" not in serve:
        by_value = serve.pop("rank_by", "logprob") == "value"
        score = {"logp": 0.0, "log_hte_value": 1.0} if by_value else {}
        if serve.get("bid_weight") and not by_value:
            score["log_bid"] = serve["bid_weight"]
        if serve.get("hte_weight") and not by_value:
            score["log_hte_value"] = serve["hte_weight"]
        serve.pop("bid_weight", None)
        serve.pop("hte_weight", None)
        serve["score"] = score
    if isinstance(out.get("align"), dict) and out["align"].get("reward") == "log_value_per_ad":
        raise GprInputError(
            "trained with the retired option align.reward='log_value_per_ad'", field="align.reward"
        )
    return out


def _preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise GprInputError(
            f"unknown preset '{name}' (choose from {', '.join(PRESETS)})", field="preset"
        )
    text = resources.files("gpr.configs").joinpath(f"{name}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    data["preset"] = name
    return data


def model_overrides(name: str) -> dict[str, Any]:
    """The model fields a named model sets over a preset (configs/models/NAME.yaml)."""
    f = resources.files("gpr.configs").joinpath("models", f"{name}.yaml")
    if not f.is_file():
        raise GprInputError(f"no model config '{name}'", field="model")
    data = yaml.safe_load(f.read_text()) or {}
    return dict(data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise GprInputError(f"override '{item}' is not of the form section.field=value", field=item)
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def error_line(err: Any) -> str:
    """A pydantic error as one line: the message, and the value when it is a single one."""
    msg = str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    return msg if isinstance(value, dict) else f"{msg} (got {value!r})"


def serve_config(run_config: dict[str, Any], overrides: list[str] | None = None) -> ServeConfig:
    """A run's serve section with `serve.field=value` overrides (`gpr simulate --set`)."""
    data = upgrade({"serve": run_config.get("serve", {})})["serve"]
    for item in overrides or []:
        keys, value = _parse_override(item)
        if len(keys) < 2 or keys[0] != "serve":
            raise GprInputError("only serve.<field>=value can be set when serving", field=item)
        _set(data, keys[1:], value, item)
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(["serve", *(str(p) for p in err["loc"])])
        raise GprInputError(error_line(err), field=loc) from None


def _set(data: dict[str, Any], keys: list[str], value: Any, item: str) -> None:
    node = data
    for k in keys[:-1]:
        if node.get(k) is None:  # an optional section that is off: set it up
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise GprInputError(f"'{k}' is not a section", field=item)
    node[keys[-1]] = value


def load_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: list[str] | None = None,
    seed: int | None = None,
) -> GprConfig:
    """Build a validated config. Precedence: overrides > seed > file > preset > defaults."""
    data: dict[str, Any] = {}
    user: dict[str, Any] = {}
    if file is not None:
        path = Path(file)
        if not path.exists():
            raise GprInputError("config file not found", file=path)
        try:
            user = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise GprInputError(f"invalid YAML: {e}", file=path) from None
        if user is None:
            raise GprInputError("config file is empty (name a preset: `preset: small`)", file=path)
        if not isinstance(user, dict):
            raise GprInputError("config must be a mapping", file=path)
    name = preset or user.get("preset") or "small"
    data = _merge(_preset_dict(str(name)), user)
    data["preset"] = name
    if seed is not None:
        data["seed"] = seed
    for item in overrides or []:
        keys, value = _parse_override(item)
        _set(data, keys, value, ".".join(keys))
    if isinstance(data.get("model"), dict):  # earlier names: model.content_input, hte_side, ...
        _upgrade_model(data["model"])
    try:
        return GprConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise GprInputError(error_line(err), file=file, field=loc) from None

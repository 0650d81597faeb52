"""The HTTP service's request and response models (pydantic), with explicit limits.

Requests are strict (a JSON int for an int: no "3", no 3.0, no true) and refuse unknown keys.
The ranges of the categorical fields come from the engine (`Engine.limits`): `build_schemas`
makes subclasses of the static models below with those bounds, so the OpenAPI schema states
exactly what the service accepts and a request out of range never reaches the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from gpr.serve.engine import LIMITS

MAX_ITEM_ID = (1 << 40) - 1  # serve.catalogue.MAX_ITEM_ID - 1
MAX_TIMESTAMP = 1 << 40  # seconds; far past any real clock, far below int64
MAX_DAY = 1 << 20
MAX_MONEY = 1e12
MAX_PATH = 16  # codes per semantic-ID path (levels + the de-dup index)
MAX_EMBEDDING = 4096

# The engine's limits the schemas use, with the ad world's values when the engine gives none.
DEFAULT_LIMITS: dict[str, int] = dict(LIMITS)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --- /v1/recommend ------------------------------------------------------------------------------
class UserIn(_In):
    """The user's attributes (the model's user tokens)."""

    age_band: int = Field(ge=0)
    gender: int = Field(ge=0)
    region: int = Field(ge=0)
    activity_tier: int = Field(ge=0)


class EnvIn(_In):
    """Where the ad request is shown."""

    scene: int = Field(ge=0)
    slot: int = Field(ge=0)
    device: int = Field(ge=0)
    hour: int = Field(ge=0, le=23)


class EventIn(_In):
    """One past event of the journey: "O" an organic item view, "E" an ad request (scene, slot,
    device, hour), "I" an ad impression (item, action 0 impression / 1 click / 2 conversion;
    the ad world also logs its request's environment on it). Unset fields are -1. Item ids the
    run does not know are accepted (they enter without an item)."""

    token_type: Literal["O", "E", "I"]
    timestamp: int = Field(ge=0, le=MAX_TIMESTAMP, description="seconds")
    item_id: int = Field(-1, ge=-1, le=MAX_ITEM_ID)
    scene: int = Field(-1, ge=-1)
    slot: int = Field(-1, ge=-1)
    device: int = Field(-1, ge=-1)
    hour: int = Field(-1, ge=-1, le=23)
    action: int = Field(-1, ge=-1, le=2)

    @model_validator(mode="after")
    def _fields_of_type(self) -> EventIn:
        need = {
            "O": ("item_id",),
            "I": ("item_id", "action"),
            "E": ("scene", "slot", "device", "hour"),
        }[self.token_type]
        for name in need:
            if getattr(self, name) < 0:
                raise ValueError(f"a '{self.token_type}' event needs {name} >= 0")
        return self


class RecommendRequest(_In):
    """One ad request: who, what they did (oldest first), where, when, and how many ads."""

    user: UserIn
    journey: list[EventIn] = Field(default_factory=list, max_length=1024)
    env: EnvIn
    timestamp: int = Field(ge=0, le=MAX_TIMESTAMP, description="seconds; not before the journey")
    k: int = Field(10, ge=1, le=100, description="ads to return")

    @model_validator(mode="after")
    def _in_time_order(self) -> RecommendRequest:
        t = [e.timestamp for e in self.journey]
        for i in range(1, len(t)):
            if t[i] < t[i - 1]:
                raise ValueError(f"journey[{i}] is older than journey[{i - 1}] (oldest first)")
        if t and t[-1] > self.timestamp:
            raise ValueError("the request's timestamp is before its journey's last event")
        return self


class ServedAdOut(BaseModel):
    """One ranked ad; a number that is not finite (e.g. a log p of -inf) is null."""

    item_id: int
    score: float | None = Field(description="the serving score that ranked it")
    logp: float | None = Field(description="log p of its semantic-ID path")
    pctr: float | None = Field(description="HTE's estimates; null without HTE")
    pcvr: float | None
    ecpm: float | None = Field(description="1000 x bid x pCTR x pCVR")
    bid: float | None


class RecommendResponse(BaseModel):
    ads: list[ServedAdOut] = Field(description="best first")
    timings_ms: dict[str, float] = Field(description="the engine's stages, queue and total")
    batch_size: int = Field(description="requests in the engine batch that served this one")
    catalogue_version: int


# --- /v1/ads ------------------------------------------------------------------------------------
class AdAdd(_In):
    """Add an ad: its full semantic-ID `path`, or its `embedding` (the run's tokenizer then
    assigns the codes). Targeting: age and region bitmasks, gender -1 for all."""

    op: Literal["add"]
    item_id: int = Field(ge=0, le=MAX_ITEM_ID)
    path: list[int] | None = Field(None, min_length=1, max_length=MAX_PATH)
    embedding: list[float] | None = Field(None, min_length=1, max_length=MAX_EMBEDDING)
    target_ages: int = Field(ge=0)
    target_regions: int = Field(ge=0)
    target_gender: int = Field(-1, ge=-1)
    created_day: int | None = Field(
        None, ge=-MAX_DAY, le=MAX_DAY, description="first day it serves (default: today)"
    )
    end_day: int = Field(MAX_DAY, ge=-MAX_DAY, le=MAX_DAY, description="serves while day < end")
    bid: float = Field(gt=0, le=MAX_MONEY, allow_inf_nan=False)
    budget: float = Field(ge=0, le=MAX_MONEY, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_source(self) -> AdAdd:
        if (self.path is None) == (self.embedding is None):
            raise ValueError("give exactly one of path and embedding")
        if self.path is not None and min(self.path) < 0:
            raise ValueError("path codes must be >= 0")
        if self.created_day is not None and self.end_day < self.created_day:
            raise ValueError("end_day is before created_day")
        return self


class AdPause(_In):
    """Pause an ad (never served until resumed)."""

    op: Literal["pause"]
    item_id: int = Field(ge=0, le=MAX_ITEM_ID)


class AdResume(_In):
    op: Literal["resume"]
    item_id: int = Field(ge=0, le=MAX_ITEM_ID)


class AdBudget(_In):
    """Set an ad's total budget (it stops serving once its spend reaches it)."""

    op: Literal["budget"]
    item_id: int = Field(ge=0, le=MAX_ITEM_ID)
    budget: float = Field(ge=0, le=MAX_MONEY, allow_inf_nan=False)


class AdSpend(_In):
    """Record spend on an ad."""

    op: Literal["spend"]
    item_id: int = Field(ge=0, le=MAX_ITEM_ID)
    amount: float = Field(ge=0, le=MAX_MONEY, allow_inf_nan=False)


AdUpdate = Annotated[AdAdd | AdPause | AdResume | AdBudget | AdSpend, Field(discriminator="op")]


class AdState(BaseModel):
    """One ad as the live catalogue holds it (serve.catalogue.LiveCatalogue.get)."""

    item_id: int
    column: int
    path: list[int]
    target_ages: int
    target_regions: int
    target_gender: int
    created_day: int
    end_day: int
    bid: float
    budget: float
    spend: float
    paused: bool
    exhausted: bool
    in_flight: bool
    live: bool


class AdResponse(BaseModel):
    ad: AdState
    catalogue_version: int


# --- errors and probes --------------------------------------------------------------------------
class ErrorBody(BaseModel):
    kind: str = Field(description="validation | input | not_found | too_large | overloaded | ...")
    field: str | None = None
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    info: dict[str, Any] = Field(default_factory=dict)


# --- the engine's limits ------------------------------------------------------------------------
@dataclass(frozen=True)
class Schemas:
    """The request models bounded by one engine's limits."""

    recommend: type[RecommendRequest]
    ad_update: Any  # the discriminated union of the bounded ad operations
    limits: dict[str, int]


def _lt(n: int) -> Any:
    return Field(ge=0, lt=max(int(n), 1))


def build_schemas(
    limits: Mapping[str, int] | None = None, *, max_journey: int = 1024, max_k: int = 100
) -> Schemas:
    """Subclasses of the request models whose categorical fields are bounded by `limits`
    (DEFAULT_LIMITS for the keys it lacks), `max_journey` events and k in 1..max_k."""
    lim = {**DEFAULT_LIMITS, **{k: int(v) for k, v in (limits or {}).items()}}
    user = create_model(
        "UserIn",
        __base__=UserIn,
        __doc__=UserIn.__doc__,
        age_band=(int, _lt(lim["age_bands"])),
        gender=(int, _lt(lim["genders"])),
        region=(int, _lt(lim["regions"])),
        activity_tier=(int, _lt(lim["activity_tiers"])),
    )
    env = create_model(
        "EnvIn",
        __base__=EnvIn,
        __doc__=EnvIn.__doc__,
        scene=(int, _lt(lim["scenes"])),
        slot=(int, _lt(lim["slots"])),
        device=(int, _lt(lim["devices"])),
        hour=(int, _lt(min(lim["hours"], 24))),
    )

    def opt(n: int) -> Any:
        return Field(-1, ge=-1, lt=max(int(n), 1))

    event = create_model(
        "EventIn",
        __base__=EventIn,
        __doc__=EventIn.__doc__,
        action=(int, opt(lim["actions"])),
        scene=(int, opt(lim["scenes"])),
        slot=(int, opt(lim["slots"])),
        device=(int, opt(lim["devices"])),
        hour=(int, opt(min(lim["hours"], 24))),
    )
    recommend = create_model(
        "RecommendRequest",
        __base__=RecommendRequest,
        __doc__=RecommendRequest.__doc__,
        user=(user, ...),
        journey=(list[event], Field(default_factory=list, max_length=max_journey)),
        env=(env, ...),
        k=(int, Field(10, ge=1, le=max_k, description="ads to return")),
    )
    ads = (1 << lim["age_bands"]) - 1, (1 << lim["regions"]) - 1
    add = create_model(
        "AdAdd",
        __base__=AdAdd,
        __doc__=AdAdd.__doc__,
        target_ages=(int, Field(ge=0, le=ads[0], description="bitmask over age bands")),
        target_regions=(int, Field(ge=0, le=ads[1], description="bitmask over regions")),
        target_gender=(int, Field(-1, ge=-1, lt=lim["genders"], description="-1: all")),
    )
    update = Annotated[add | AdPause | AdResume | AdBudget | AdSpend, Field(discriminator="op")]
    return Schemas(recommend=recommend, ad_update=update, limits=lim)

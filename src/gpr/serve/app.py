"""The HTTP service of `gpr serve` (FastAPI): recommendations, live catalogue updates, probes and
Prometheus metrics over one loaded `Engine`.

    POST /v1/recommend   RecommendRequest -> RecommendResponse (ranked ads, timings)
    POST /v1/ads         AdUpdate (op: add | pause | resume | budget | spend) -> AdResponse
    GET  /v1/ads/{id}    -> AdResponse (404 for an unknown ad)
    GET  /healthz        the process is up;   GET /readyz   the engine takes requests (else 503)
    GET  /metrics        Prometheus text;     GET /docs, /openapi.json   the API

Client errors are 4xx with one JSON body {"error": {"kind", "field", "message"}}: 422 invalid
(`validation` from the schemas, `input` from the engine), 404 unknown, 409 duplicate ad, 413 body
over `max_body_bytes`, 429 queue full. Only a fault of the service itself is a 500 (`internal`,
logged with its traceback, counted). Concurrent recommendations are micro-batched (serve.batcher)
and the engine runs in one worker thread. Each request logs one JSON line (logger
`gpr.serve.access`). On shutdown (uvicorn's SIGTERM / SIGINT) the lifespan drains the batcher,
after uvicorn has let the in-flight requests finish.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Path, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpr.core.errors import GprInputError
from gpr.serve.batcher import Closed, MicroBatcher, Overloaded, Served
from gpr.serve.catalogue import LiveCatalogue
from gpr.serve.engine import Env, Event, ServeRequest, UserFeatures
from gpr.serve.schemas import (
    MAX_ITEM_ID,
    AdAdd,
    AdBudget,
    AdPause,
    AdResponse,
    AdResume,
    AdSpend,
    AdState,
    ErrorResponse,
    Health,
    RecommendRequest,
    RecommendResponse,
    ServedAdOut,
    build_schemas,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("gpr.serve")
access_log = logging.getLogger("gpr.serve.access")


class EngineLike(Protocol):
    """What the app needs of serve.engine.Engine."""

    @property
    def catalogue(self) -> LiveCatalogue: ...
    @property
    def info(self) -> dict[str, Any]: ...
    @property
    def limits(self) -> dict[str, int]: ...

    def recommend(self, requests: list[ServeRequest]) -> list[Any]: ...


@dataclass(frozen=True)
class Settings:
    """Limits and batching of the service."""

    max_batch: int = 32  # requests per engine call
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for more
    max_queue: int = 1024  # queued requests; more get 429
    max_body_bytes: int = 1 << 20  # larger bodies get 413
    max_journey: int = 1024  # events per request
    max_k: int = 100  # ads per request
    shutdown_timeout_s: float = 30.0  # to finish in-flight requests on shutdown


class ApiError(Exception):
    """A client error with its HTTP status (or a 5xx of the service)."""

    def __init__(self, status: int, kind: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.field = status, kind, message, field


def _error_body(kind: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"kind": kind, "field": field, "message": message, **extra}}


CHANGING = ("catalogue_ads", "catalogue_version", "catalogue_size", "day")  # gauges, not info


# --- metrics ------------------------------------------------------------------------------------
class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self, engine: EngineLike, pending: Callable[[], int], max_batch: int) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "gpr_requests", "HTTP requests", ["method", "path", "status"], registry=r
        )
        self.latency = Histogram(
            "gpr_request_latency_seconds",
            "HTTP request latency",
            ["path"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.errors = Counter("gpr_errors", "Error responses by kind", ["kind"], registry=r)
        sizes = [2**i for i in range(max(max_batch, 1).bit_length())] + [max_batch]
        self.batch_size = Histogram(
            "gpr_batch_size",
            "Requests per engine batch",
            buckets=sorted({float(s) for s in sizes}),
            registry=r,
        )
        self.engine_seconds = Histogram(
            "gpr_engine_batch_seconds", "Engine time per batch", registry=r
        )
        cat = engine.catalogue
        Gauge("gpr_queue_depth", "Recommendations queued or running", registry=r).set_function(
            lambda: float(pending())
        )
        Gauge("gpr_trie_ads", "Ads (leaves) in the live catalogue trie", registry=r).set_function(
            lambda: float(len(cat))
        )
        Gauge("gpr_catalogue_version", "Live catalogue version", registry=r).set_function(
            lambda: float(cat.version)
        )
        Gauge("gpr_catalogue_day", "Live catalogue day", registry=r).set_function(
            lambda: float(cat.day)
        )
        static = {k: v for k, v in engine.info.items() if k not in CHANGING}
        Info("gpr_run", "The served run", registry=r).info(
            {str(k): str(v) for k, v in static.items()}
        )

    def on_batch(self, n: int, seconds: float) -> None:
        self.batch_size.observe(n)
        self.engine_seconds.observe(seconds)


# --- logging ------------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the record's `fields` (if any)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for every logger (uvicorn's included)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# --- the guard: body limit, access log, metrics, last-resort 500 ---------------------------------
class Guard:
    """Pure ASGI middleware around every HTTP request: refuses bodies over the limit (413)
    before any parsing, turns an escaped exception into a logged, counted 500, and writes the
    access log line and the request metrics."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: Metrics) -> None:
        self.app, self.max_body, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        info: dict[str, Any] = {"status": 0, "batch_size": None, "error": None}
        scope["gpr"] = info

        async def send_(message: Message) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            if isinstance(body, ApiError):
                await self._send_error(send_, body, info)
                return
            await self.app(scope, _replay(body, receive), send_)
        except Exception as e:  # a bug of the service: never leak it as a dropped connection
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if info["status"] == 0:
                err = ApiError(500, "internal", f"internal error ({type(e).__name__})")
                await self._send_error(send_, err, info)
            else:
                info["error"] = "internal"
                self.metrics.errors.labels("internal").inc()
        finally:
            self._record(scope, info, time.perf_counter() - t0)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | ApiError:
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    return ApiError(400, "bad_request", "invalid Content-Length")
                if n > self.max_body:
                    return self._too_large(n)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return self._too_large(size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self, n: int) -> ApiError:
        msg = f"request body of {n}+ bytes is over the limit of {self.max_body} bytes"
        return ApiError(413, "too_large", msg)

    async def _send_error(self, send: Send, err: ApiError, info: dict[str, Any]) -> None:
        info["error"] = err.kind
        self.metrics.errors.labels(err.kind).inc()
        body = json.dumps(_error_body(err.kind, err.message, err.field)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": err.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, info: dict[str, Any], seconds: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or "other"  # the template: bounded label values
        method = str(scope.get("method", ""))
        self.metrics.requests.labels(method, path, str(info["status"])).inc()
        self.metrics.latency.labels(path).observe(seconds)
        fields = {
            "method": method,
            "path": scope.get("path", ""),
            "route": path,
            "status": info["status"],
            "latency_ms": round(seconds * 1000, 3),
            "batch_size": info["batch_size"],
        }
        if info["error"]:
            fields["error"] = info["error"]
        access_log.info("request", extra={"fields": fields})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the buffered body once, then waits on the client (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# --- the app ------------------------------------------------------------------------------------
def _engine_request(r: RecommendRequest) -> ServeRequest:
    return ServeRequest(
        user=UserFeatures(**r.user.model_dump()),
        journey=[Event(**e.model_dump()) for e in r.journey],
        env=Env(**r.env.model_dump()),
        timestamp=r.timestamp,
        k=r.k,
    )


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _response(served: Served[Any], total_s: float, version: int) -> RecommendResponse:
    rec = served.result
    ads = []
    for a in rec.ads:
        row = {k: _finite(getattr(a, k)) for k in ("score", "logp", "pctr", "pcvr", "ecpm", "bid")}
        ads.append(ServedAdOut(item_id=int(a.item_id), **row))
    timings = {str(k): float(v) for k, v in dict(rec.timings_ms).items() if _finite(v) is not None}
    timings.update(queue=served.queue_s * 1000, batch=served.run_s * 1000, total=total_s * 1000)
    return RecommendResponse(
        ads=ads, timings_ms=timings, batch_size=served.batch_size, catalogue_version=version
    )


def _with_body(fn: Callable[..., Any], model: Any) -> Callable[..., Any]:
    """Point the handler's `body` parameter at `model` (built from the engine's limits), which
    FastAPI then validates and documents."""
    fn.__annotations__["body"] = model
    return fn


ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse, "description": d}
    for s, d in (
        (400, "unreadable body"),
        (413, "body over the limit"),
        (422, "invalid request"),
    )
}


def create_app(engine: EngineLike, settings: Settings | None = None) -> FastAPI:
    """The FastAPI app serving `engine`; the batcher starts and stops with the app's lifespan."""
    st = settings or Settings()
    schemas = build_schemas(engine.limits, max_journey=st.max_journey, max_k=st.max_k)
    batcher: MicroBatcher[ServeRequest, Any] = MicroBatcher(
        engine.recommend, max_batch=st.max_batch, max_wait_ms=st.max_wait_ms, max_queue=st.max_queue
    )
    metrics = Metrics(engine, lambda: batcher.pending, st.max_batch)
    batcher.on_batch = metrics.on_batch
    cat = engine.catalogue

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        log.info(
            "ready", extra={"fields": {"run": engine.info, "settings": dataclasses.asdict(st)}}
        )
        try:
            yield
        finally:
            log.info("shutting down", extra={"fields": {"pending": batcher.pending}})
            await batcher.close(st.shutdown_timeout_s)
            log.info("stopped")

    app = FastAPI(
        title="gpr serve",
        version="1",
        description="Generative ad recommendation over one trained run (see gpr.serve.app).",
        lifespan=lifespan,
    )
    app.state.engine, app.state.batcher, app.state.metrics = engine, batcher, metrics
    app.add_middleware(Guard, max_body_bytes=st.max_body_bytes, metrics=metrics)

    # --- errors: one JSON shape, counted by kind ---------------------------------------------
    def error(request: Request, err: ApiError, **extra: Any) -> JSONResponse:
        request.scope.get("gpr", {})["error"] = err.kind
        metrics.errors.labels(err.kind).inc()
        headers = {"Retry-After": "1"} if err.status in (429, 503) else None
        body = _error_body(err.kind, err.message, err.field, **extra)
        return JSONResponse(jsonable_encoder(body), err.status, headers=headers)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(request, exc)

    @app.exception_handler(GprInputError)
    async def on_input_error(request: Request, exc: GprInputError) -> JSONResponse:
        return error(request, ApiError(422, "input", exc.message, exc.field))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = list(exc.errors())[:20]
        details = [
            {
                "loc": [str(x) for x in e.get("loc", ())],
                "msg": str(e.get("msg", "")).removeprefix("Value error, "),
                "type": e.get("type"),
            }
            for e in errs
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        loc = first["loc"][1:] if first["loc"][:1] in (["body"], ["path"]) else first["loc"]
        field = ".".join(loc) or None
        msg = f"{field}: {first['msg']}" if field else str(first["msg"])
        if len(details) > 1:
            msg += f" (and {len(details) - 1} more)"
        return error(request, ApiError(422, "validation", msg, field), details=details)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        return error(
            request, ApiError(exc.status_code, kinds.get(exc.status_code, "http"), str(exc.detail))
        )

    # --- recommendations ---------------------------------------------------------------------
    async def recommend(body: RecommendRequest, request: Request) -> RecommendResponse:
        """Rank up to `k` eligible ads for one request (micro-batched with concurrent ones)."""
        t0 = time.perf_counter()
        try:
            served = await batcher.submit(_engine_request(body))
        except Overloaded as e:
            raise ApiError(429, "overloaded", str(e)) from e
        except Closed as e:
            raise ApiError(503, "unavailable", str(e)) from e
        except GprInputError as e:  # the engine's field names the batch row: not the client's
            field = re.sub(r"^requests\[\d+\]\.", "", e.field) if e.field else None
            raise ApiError(422, "input", e.message, field) from e
        except Exception as e:
            log.error("engine error", exc_info=True)
            raise ApiError(500, "internal", f"engine error ({type(e).__name__})") from e
        request.scope.get("gpr", {})["batch_size"] = served.batch_size
        return _response(served, time.perf_counter() - t0, cat.version)

    app.post(
        "/v1/recommend",
        response_model=RecommendResponse,
        responses={**ERRORS, 429: {"model": ErrorResponse, "description": "queue full"}},
        tags=["recommend"],
    )(_with_body(recommend, schemas.recommend))

    # --- the live catalogue ------------------------------------------------------------------
    def known(item_id: int) -> dict[str, Any]:
        try:
            return cat.get(item_id)
        except GprInputError as e:
            raise ApiError(404, "not_found", f"unknown ad {item_id}", "item_id") from e

    def update_ad(body: AdAdd | AdPause | AdResume | AdBudget | AdSpend) -> AdResponse:
        """Change the live catalogue: add an ad, pause or resume one, set its budget, record
        spend. Takes effect for every recommendation that starts afterwards."""
        if isinstance(body, AdAdd):
            try:
                cat.get(body.item_id)
            except GprInputError:
                pass
            else:
                raise ApiError(409, "conflict", f"ad {body.item_id} already exists", "item_id")
            source: dict[str, Any] = (
                {"path": body.path}
                if body.path is not None
                else {"embedding": np.asarray(body.embedding, dtype=np.float32)}
            )
            cat.add_ad(
                body.item_id,
                **source,
                target_ages=body.target_ages,
                target_regions=body.target_regions,
                target_gender=body.target_gender,
                created_day=cat.day if body.created_day is None else body.created_day,
                end_day=body.end_day,
                bid=body.bid,
                budget=body.budget,
            )
        else:
            known(body.item_id)
            if isinstance(body, AdPause):
                cat.pause(body.item_id)
            elif isinstance(body, AdResume):
                cat.resume(body.item_id)
            elif isinstance(body, AdBudget):
                cat.set_budget(body.item_id, body.budget)
            else:
                cat.spend(body.item_id, body.amount)
        return AdResponse(ad=AdState(**cat.get(body.item_id)), catalogue_version=cat.version)

    app.post(
        "/v1/ads",
        response_model=AdResponse,
        responses={
            **ERRORS,
            404: {"model": ErrorResponse, "description": "unknown ad"},
            409: {"model": ErrorResponse, "description": "the ad exists"},
        },
        tags=["ads"],
    )(_with_body(update_ad, schemas.ad_update))

    @app.get(
        "/v1/ads/{item_id}",
        response_model=AdResponse,
        responses={404: {"model": ErrorResponse, "description": "unknown ad"}, 422: ERRORS[422]},
        tags=["ads"],
    )
    def get_ad(item_id: int = Path(ge=0, le=MAX_ITEM_ID)) -> AdResponse:
        """One ad as the live catalogue holds it."""
        return AdResponse(ad=AdState(**known(item_id)), catalogue_version=cat.version)

    # --- probes and metrics --------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["ops"])
    def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Health,
        responses={503: {"model": Health, "description": "starting or stopping"}},
        tags=["ops"],
    )
    def readyz() -> Any:
        """The engine takes requests (503 while starting or shutting down)."""
        if not batcher.running:
            return JSONResponse(Health(status="unavailable").model_dump(), 503)
        info = {**engine.info, "catalogue_size": len(cat), "catalogue_version": cat.version}
        return Health(status="ready", info=jsonable_encoder(info))

    @app.get("/metrics", response_class=Response, tags=["ops"])
    def prometheus() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


# --- running it ---------------------------------------------------------------------------------
def listen(host: str, port: int) -> socket.socket:
    """A bound socket for `host:port` (GprInputError when it cannot be had)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it; without it each keep-alive response waits ~40 ms for
        # the client's delayed ACK (asyncio sets it only on sockets it created as TCP itself)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as e:
        raise GprInputError(f"cannot listen on {host}:{port}: {e}", field="port") from e
    sock.set_inheritable(True)
    return sock


def run_server(app: FastAPI, sock: socket.socket, settings: Settings | None = None) -> bool:
    """Serve on `sock` until SIGINT / SIGTERM, then finish the in-flight requests and stop.
    Returns whether the server started."""
    import uvicorn

    st = settings or Settings()
    config = uvicorn.Config(
        app,
        log_config=None,  # our JSON logging (setup_logging)
        access_log=False,  # the Guard writes one line per request
        lifespan="on",
        timeout_graceful_shutdown=int(math.ceil(st.shutdown_timeout_s)),
    )
    server = uvicorn.Server(config)
    # uvicorn handles the signals while it runs, and re-raises them after its graceful shutdown:
    # ignored then, so a stop by signal ends the command normally.
    stops = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.signal(s, signal.SIG_IGN) for s in stops}
    try:
        server.run(sockets=[sock])
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    return bool(server.started)

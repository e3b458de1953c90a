"""The FastAPI app of ``privdiff serve``: DP-RDM generation over HTTP with API keys and per-key budgets.

:func:`create_app` takes an assembled pipeline (or a loader that builds one with
:func:`privdiff.rdm.pipeline.make_pipeline`), the dataset ledger's path and a keys file. The private
index and the ledger stay in this process; clients send prompts and get images and privacy numbers.

Charging (two ledgers, one order). A request is checked against both budgets (``preview``) before
either is charged; then, under one lock shared by every server process on the keys file, the key's
quota ledger is charged first and the dataset ledger second (inside the pipeline, which releases
right after). Why this order: a crash between the two charges then leaves the key *over*-counted
(it paid for a query the dataset never answered), never under-counted, and the dataset ledger, the
authority, is only ever charged by its own atomic check-and-charge, so it cannot pass its budget.
The lock makes the previews exact for all servers sharing the keys file, so a refusal (409) charges
nothing; only a charge to the dataset by another program between the preview and the charge (e.g.
``privdiff generate`` on the same ledger) can turn into a 409 after the key's charge, again
over-counting the key only.

Generation runs on a bounded thread pool (``workers`` threads), so ``/healthz`` and ``/v1/budget``
answer while images are made; uvicorn's SIGTERM handling lets in-flight requests finish (each
charged request goes on to its release) before the pool shuts down.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from privdiff.errors import (
    InvalidParameter,
    LedgerError,
    PrivacyBudgetExceeded,
    PrivdiffError,
    check_int,
)
from privdiff.service.keys import IdempotencyStore, KeyInfo, KeyStore

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one server process per keys file
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("privdiff.service")
STATIC_DIR = Path(__file__).with_name("static")
#: Longest prompt accepted (characters); the text encoders truncate far below this anyway.
MAX_PROMPT_CHARS = 1000
_IDEM_MAX = 255


@dataclass(frozen=True)
class ServiceSettings:
    """Limits of one server. ``rate``/``burst``: the per-key token bucket of ``/v1/generate``."""

    max_images: int = 16
    max_body_bytes: int = 16 * 1024
    rate: float = 1.0
    burst: int = 10
    workers: int = 1
    idempotency_wait_s: float = 600.0

    def validate(self) -> ServiceSettings:
        check_int("max_images", self.max_images, 1, 4096)
        check_int("max_body_bytes", self.max_body_bytes, 256, 2**24)
        check_int("burst", self.burst, 1)
        check_int("workers", self.workers, 1, 64)
        if not (isinstance(self.rate, (int, float)) and math.isfinite(self.rate) and self.rate > 0):
            raise InvalidParameter("rate", self.rate, "a finite number > 0 (requests per second per key)")
        return self


class ApiError(Exception):
    """An HTTP error with the service's JSON body ``{"error": code, "detail": ...}``."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers

    def body(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


class _TokenBucket:
    """Per-key token bucket: ``burst`` tokens, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = float(rate), float(burst)
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._state.get(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._state[key_id] = (tokens - 1.0, now)
                return 0.0
            self._state[key_id] = (tokens, now)
            return (1.0 - tokens) / self.rate


class _FileLock:
    """A lock for the threads of this process (threading) and other processes (flock)."""

    def __init__(self, path: Path):
        self._thread_lock = threading.Lock()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @contextlib.contextmanager
    def hold(self):
        with self._thread_lock:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


class _Instances:
    """Liveness of server instances: each holds an flock on its own file for its whole life, so
    another process can tell a crashed owner of an idempotency claim from a live one."""

    def __init__(self, directory: Path):
        directory.mkdir(mode=0o700, exist_ok=True)
        self.dir = directory
        self.id = uuid.uuid4().hex
        self._fd = os.open(directory / f"{self.id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def alive(self, owner: str) -> bool:
        if owner == self.id:
            return True
        path = self.dir / f"{owner}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except (FileNotFoundError, ValueError):
            return False
        try:
            if fcntl is None:
                return True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return False
        finally:
            os.close(fd)

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{self.id}.lock").unlink()
        os.close(self._fd)


class _KeyChargedSource:
    """The pipeline's context source with the key's charge in front of the dataset's (module
    docstring). Everything else is the wrapped source's."""

    def __init__(self, inner: Any, service: Service):
        self._inner = inner
        self._service = service

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def condition(self, queries: Any, *, request_id: str | None = None) -> Any:
        ticket = getattr(self._service.local, "ticket", None)
        if ticket is None or ticket["request_id"] != request_id:
            # Only the service's own worker may spend budget through this pipeline.
            raise InvalidParameter("request_id", request_id, "a request of the service")
        count = int(len(queries))
        svc = self._service
        with svc.charge_lock.hold():
            before = svc.check_budgets(ticket["key"], count)
            book = svc.key_ledger(ticket["key"])
            if not ticket.get("key_charged"):
                charge = book.charge(svc.query, count, request_id=request_id)
                ticket["key_charge"] = charge
            cond = self._inner.condition(queries, request_id=request_id)
        ticket["dataset_before"] = before
        return cond


class Service:
    """State behind the app: the pipeline, both kinds of ledger, keys, limits, the worker pool."""

    def __init__(
        self,
        *,
        ledger: str | os.PathLike,
        keys: str | os.PathLike,
        pipeline: Any = None,
        loader: Callable[[Any], Any] | None = None,
        settings: ServiceSettings | None = None,
        defaults: dict[str, Any] | None = None,
    ):
        from concurrent.futures import ThreadPoolExecutor

        from privdiff.accounting.ledger import Ledger

        if (pipeline is None) == (loader is None):
            raise InvalidParameter("pipeline/loader", (pipeline, loader), "exactly one of them")
        self.settings = (settings or ServiceSettings()).validate()
        self.ledger_path = Path(ledger)
        self.dataset = Ledger.open(self.ledger_path)
        self.keys = KeyStore(keys)
        self.idem = IdempotencyStore(self.keys)
        self.keys.ledger_dir.mkdir(mode=0o700, exist_ok=True)
        self.charge_lock = _FileLock(self.keys.path.with_name(self.keys.path.name + ".charge.lock"))
        self.instances = _Instances(self.keys.path.with_name(self.keys.path.name + ".instances"))
        self._key_books: dict[str, Any] = {}
        self._books_lock = threading.Lock()
        self.local = threading.local()
        self.bucket = _TokenBucket(self.settings.rate, self.settings.burst)
        self.pool = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="privdiff-gen")
        self.pipeline: Any = None
        self.defaults: dict[str, Any] = dict(defaults or {})
        self.query: Any = None
        self.state = "loading"
        self._loader = loader
        if pipeline is not None:
            self._install(pipeline)

    # ------------------------------------------------------------------ start-up
    def _install(self, pipeline: Any) -> None:
        source = pipeline.source
        if getattr(source, "mode", None) != "dp-rdm":
            raise InvalidParameter("mode", getattr(source, "mode", None), "'dp-rdm' (the service only serves DP)")
        self.query = source.retriever.dp_query
        pipeline.source = _KeyChargedSource(source, self)
        self.pipeline = pipeline
        self.state = "ready"

    def load(self) -> None:
        """Run the loader (start-up, in a thread); until it returns the API answers 503."""
        try:
            result = self._loader(self.dataset)
            pipeline, defaults = result if isinstance(result, tuple) else (result, {})
            self.defaults = dict(defaults) | self.defaults
            self._install(pipeline)
        except BaseException:  # noqa: BLE001 - reported by /healthz, logged here
            log.exception("loading the pipeline failed")
            self.state = "failed"

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.instances.close()
        self.charge_lock.close()

    # ------------------------------------------------------------------ budgets
    def key_ledger(self, key: KeyInfo) -> Any:
        """The key's quota ledger (created on first use with the dataset's δ and accountant)."""
        from privdiff.accounting.ledger import Ledger

        with self._books_lock:
            book = self._key_books.get(key.id)
            if book is not None:
                return book
            path = self.keys.ledger_dir / f"{key.id}.db"
            if not path.exists():
                quota = key.epsilon_quota if key.epsilon_quota is not None else self.dataset.epsilon_budget
                with contextlib.suppress(LedgerError):  # another server created it first
                    Ledger.create(
                        path,
                        epsilon=quota,
                        delta=self.dataset.delta,
                        accountant=self.dataset.accountant,
                        dataset=f"key {key.name}",
                    )
            book = Ledger.open(path)
            if book.delta != self.dataset.delta or book.accountant != self.dataset.accountant:
                raise LedgerError(f"the quota ledger of key {key.name!r} does not match the dataset's δ/accountant")
            self._key_books[key.id] = book
            return book

    def check_budgets(self, key: KeyInfo, count: int) -> float:
        """Raise :class:`PrivacyBudgetExceeded` (tagged with its scope) unless ``count`` queries fit
        both the dataset and the key; returns the dataset's ε before."""
        from privdiff.rdm.pipeline import queries_that_fit

        for scope, book in (("dataset", self.dataset), ("key", self.key_ledger(key))):
            would_be = book.preview(self.query, count)
            if would_be > book.epsilon_budget:
                exc = PrivacyBudgetExceeded(
                    epsilon_spent=book.status().epsilon_spent,
                    epsilon_would_be=would_be,
                    epsilon_budget=book.epsilon_budget,
                    delta=book.delta,
                    queries_requested=count,
                    queries_remaining=queries_that_fit(book, self.query, limit=max(1, count - 1)) if count > 1 else 0,
                )
                exc.scope = scope  # type: ignore[attr-defined]
                raise exc
        return self.dataset.status().epsilon_spent

    def budget(self, key: KeyInfo) -> dict[str, Any]:
        from privdiff.rdm.pipeline import queries_that_fit

        ds = self.dataset.status()
        kb = self.key_ledger(key)
        ks = kb.status()
        fit = min(queries_that_fit(self.dataset, self.query), queries_that_fit(kb, self.query))
        return {
            "dataset": {
                "epsilon_budget": ds.epsilon_budget,
                "epsilon_spent": ds.epsilon_spent,
                "epsilon_remaining": ds.epsilon_remaining,
                "delta": ds.delta,
                "queries": ds.queries,
                "accountant": ds.accountant,
            },
            "key": {
                "name": key.name,
                "role": key.role,
                "epsilon_quota": ks.epsilon_budget,
                "epsilon_spent": ks.epsilon_spent,
                "epsilon_remaining": ks.epsilon_remaining,
                "queries": ks.queries,
            },
            "setting": {"sigma": self.query.sigma, "q": self.query.sample_rate, "k": self.query.k},
            "queries_remaining": fit,
        }

    # ------------------------------------------------------------------ generation (worker thread)
    def run_generation(self, key: KeyInfo, req: dict[str, Any], request_id: str, key_charged: bool) -> dict:
        ticket = {"key": key, "request_id": request_id, "key_charged": key_charged}
        self.local.ticket = ticket
        try:
            out = self.pipeline(
                [req["prompt"]],
                images_per_prompt=req["n"],
                num_inference_steps=req["steps"],
                guidance_scale=req["guidance_scale"],
                seed=req["seed"],
                request_id=request_id,
            )
        finally:
            self.local.ticket = None
        images = [_png_b64(img) for img in out.images[0]]
        pv = out.privacy
        key_charge = ticket.get("key_charge")
        key_book = self.key_ledger(key)
        key_status = key_book.status() if key_charge is None else None
        return {
            "images": images,
            "privacy": {
                "epsilon_request": max(0.0, float(pv["epsilon_spent"]) - float(ticket["dataset_before"])),
                "epsilon_spent_dataset": pv["epsilon_spent"],
                "epsilon_remaining_dataset": pv["epsilon_remaining"],
                "epsilon_spent_key": key_charge.epsilon_spent if key_charge else key_status.epsilon_spent,
                "epsilon_remaining_key": key_charge.epsilon_remaining if key_charge else key_status.epsilon_remaining,
                "delta": pv["delta"],
                "sigma": pv["sigma"],
                "q": pv["sample_rate"],
                "k": pv["k"],
            },
            "request_id": request_id,
            "seed": out.settings["seed"],
            "steps": out.settings["num_inference_steps"],
        }


def _png_b64(img: Any) -> str:
    from PIL import Image

    arr = img[..., 0] if img.shape[-1] == 1 else img
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Request parsing: every field checked, with its name and allowed range, before anything is charged
# ---------------------------------------------------------------------------------------------

_FIELDS = {"prompt", "n", "seed", "steps", "mode", "guidance_scale"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_generate(body: Any, service: Service) -> dict[str, Any]:
    from privdiff.rdm.pipeline import MAX_SEED

    s = service.settings
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_input", "the body must be a JSON object with at least 'prompt'")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise ApiError(422, "invalid_input", f"unknown field {unknown[0]!r}: allowed fields are {sorted(_FIELDS)}")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        raise ApiError(
            422, "invalid_input", f"field 'prompt': must be non-empty text of at most {MAX_PROMPT_CHARS} characters"
        )
    n = body.get("n", 1)
    if not _is_int(n) or n < 1:
        raise ApiError(422, "invalid_input", f"field 'n': must be an integer in [1, {s.max_images}], got {n!r}")
    if n > s.max_images:
        raise ApiError(413, "too_many_images", f"field 'n': {n} images requested, at most {s.max_images} per request")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
        raise ApiError(422, "invalid_input", f"field 'seed': must be an integer in [0, {MAX_SEED}], got {seed!r}")
    max_steps = int(service.pipeline.scheduler.config.num_train_timesteps)
    steps = body.get("steps", service.defaults.get("num_inference_steps", 50))
    if not _is_int(steps) or not 1 <= steps <= max_steps:
        raise ApiError(422, "invalid_input", f"field 'steps': must be an integer in [1, {max_steps}], got {steps!r}")
    mode = body.get("mode", "dp-rdm")
    if mode != "dp-rdm":
        raise ApiError(422, "invalid_input", f"field 'mode': must be 'dp-rdm', got {mode!r}")
    w = body.get("guidance_scale", service.defaults.get("guidance_scale", 2.0))
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or not 0 <= w <= 100:
        raise ApiError(422, "invalid_input", f"field 'guidance_scale': must be a number in [0, 100], got {w!r}")
    req = {"prompt": prompt, "n": n, "seed": seed, "steps": steps, "guidance_scale": float(w)}
    try:
        service.pipeline.check_request(
            [prompt], images_per_prompt=n, num_inference_steps=steps, guidance_scale=float(w), seed=seed
        )
    except InvalidParameter as exc:
        raise ApiError(422, "invalid_input", str(exc)) from None
    if req["seed"] is None:
        # Drawn here (public sampler noise only) so an idempotent retry reports the seed it used.
        req["seed"] = int.from_bytes(os.urandom(8), "big") % (MAX_SEED + 1)
    return req


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


def create_app(
    *,
    ledger: str | os.PathLike,
    keys: str | os.PathLike,
    pipeline: Any = None,
    loader: Callable[[Any], Any] | None = None,
    settings: ServiceSettings | None = None,
    defaults: dict[str, Any] | None = None,
):
    """The FastAPI app. Give an assembled ``pipeline`` (tests) or a ``loader(ledger)`` returning
    ``(pipeline, defaults)`` (the server: it runs in a thread at start-up; 503 until it is done).

    ``loader`` gets the service's open dataset :class:`~privdiff.accounting.Ledger` and must build
    the pipeline on it (``make_pipeline(..., ledger=ledger)``): the process then holds one SQLite
    handle on the file. A second ``Ledger.open`` of the same file in this process would, when its
    header check closes its descriptor, drop the process's POSIX locks, and another process could
    then checkpoint and delete the WAL under this one (sqlite.org/howtocorrupt.html §2.2): charges
    written afterwards would be lost to every other reader."""
    service = Service(ledger=ledger, keys=keys, pipeline=pipeline, loader=loader, settings=settings, defaults=defaults)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if service.state == "loading":
            threading.Thread(target=service.load, name="privdiff-load", daemon=True).start()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="privdiff serve",
        version="1",
        description="DP-RDM image generation with a formal (ε, δ) guarantee for every private image.",
        docs_url=None,  # Swagger UI loads from a CDN; the schema stays at /openapi.json
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service

    class GenerateRequest(BaseModel):
        prompt: str = Field(..., description=f"Text prompt (1-{MAX_PROMPT_CHARS} characters); one charged query.")
        n: int = Field(1, description=f"Images drawn from the one private context, 1-{service.settings.max_images}.")
        seed: int | None = Field(None, description="Seed of the public sampler noise (never of the DP noise).")
        steps: int | None = Field(None, description="DDIM steps (default: the model's).")
        mode: str = Field("dp-rdm", description="Only 'dp-rdm'.")
        guidance_scale: float | None = Field(None, description="Classifier-free guidance w in [0, 100].")

    def error(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, "invalid_input", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def _any_error(request: Request, exc: Exception):
        # Never a traceback or an internal message (it could name a path): the log has it.
        log.exception("unhandled error on %s", request.url.path)
        return error(500, "internal", "internal error; the server log has the details")

    def ready() -> None:
        if service.state != "ready":
            raise ApiError(
                503, "not_ready", f"the model is {service.state}; try again shortly", headers={"Retry-After": "2"}
            )

    def authenticate(request: Request, role: str | None = None) -> KeyInfo:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
        if not key:
            raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
        info = service.keys.verify(key)
        if info is None:
            raise ApiError(401, "unauthorized", "invalid or revoked API key")
        if role is not None and info.role != role:
            raise ApiError(403, "forbidden", f"this endpoint needs a key with role {role!r}")
        return info

    @app.get("/healthz", summary="Liveness and readiness")
    async def healthz():
        status = 200 if service.state == "ready" else 503
        return JSONResponse({"status": service.state}, status_code=status)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/v1/budget", summary="ε spent and remaining for the dataset and the caller's key")
    def budget(request: Request):
        ready()
        key = authenticate(request)
        return _guard(lambda: service.budget(key))

    @app.get("/v1/history", summary="The dataset ledger's history (admin keys only)")
    def history(request: Request, limit: int = 1000):
        ready()
        authenticate(request, role="admin")
        if not 1 <= limit <= 100_000:
            raise ApiError(422, "invalid_input", f"query 'limit': must be an integer in [1, 100000], got {limit}")

        def read():
            rows = service.dataset.history(limit=limit)
            # Per charge: when, the request label, the setting and ε after; nothing about the data.
            return {
                "status": {k: v for k, v in service.dataset.status().to_dict().items() if k not in ("path", "index")},
                "charges": [
                    {
                        "time": r.time,
                        "request_id": r.request_id,
                        "sigma": r.sigma,
                        "q": r.sample_rate,
                        "k": r.k,
                        "count": r.count,
                        "epsilon_after": r.epsilon_after,
                    }
                    for r in rows
                ],
            }

        return _guard(read)

    @app.post(
        "/v1/generate",
        summary="Generate n images for one prompt (one charged private query)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": GenerateRequest.model_json_schema()}},
            }
        },
    )
    async def generate(request: Request):
        ready()
        key = authenticate(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "unsupported_media_type", "send the body as 'Content-Type: application/json'")
        raw = await _read_body(request, service.settings.max_body_bytes)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(422, "invalid_input", "the body is not valid JSON") from None
        req = parse_generate(body, service)
        wait = service.bucket.take(key.id)
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"too many requests for this key; retry in {wait:.1f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        idem = request.headers.get("idempotency-key")
        if idem is None:
            status, payload = await _run(service, key, req, "req_" + uuid.uuid4().hex, key_charged=False)
            return JSONResponse(payload, status_code=status)
        if not idem or len(idem) > _IDEM_MAX or not idem.isprintable():
            raise ApiError(
                422, "invalid_input", f"header 'Idempotency-Key': must be 1-{_IDEM_MAX} printable characters"
            )
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return await _idempotent(service, key, req, idem, fingerprint)

    return app


def _guard(fn: Callable[[], Any]) -> Any:
    """Map library errors of a read endpoint to the service's JSON errors (nothing internal)."""
    try:
        return fn()
    except LedgerError:
        log.exception("ledger unavailable")
        raise ApiError(
            500, "ledger_unavailable", "the privacy ledger cannot be read; the operator must check it"
        ) from None


async def _read_body(request: Any, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _run(service: Service, key: KeyInfo, req: dict, request_id: str, *, key_charged: bool) -> tuple[int, dict]:
    """Run one generation on the worker pool: (status, JSON body). Budget refusals are checked
    cheaply first (no lock), then authoritatively under the charge lock in the worker."""
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, service.check_budgets, key, 1)
        payload = await loop.run_in_executor(service.pool, service.run_generation, key, req, request_id, key_charged)
        return 200, payload
    except PrivacyBudgetExceeded as exc:
        scope = getattr(exc, "scope", "dataset")
        what = "this key's ε quota" if scope == "key" else "the dataset's ε budget"
        return 409, {"error": "over_budget", "detail": f"{what}: {exc}"}
    except InvalidParameter as exc:
        return 422, {"error": "invalid_input", "detail": str(exc)}
    except LedgerError:
        log.exception("ledger error during generation")
        return 500, {"error": "ledger_unavailable", "detail": "the privacy ledger cannot be used; nothing released"}
    except PrivdiffError:
        log.exception("generation failed")
        return 500, {"error": "generation_failed", "detail": "generation failed; the server log has the details"}


async def _idempotent(service: Service, key: KeyInfo, req: dict, idem: str, fingerprint: str):
    loop = asyncio.get_running_loop()
    owner = service.instances.id
    deadline = time.monotonic() + service.settings.idempotency_wait_s
    request_id = "req_" + uuid.uuid4().hex
    while True:
        row = await loop.run_in_executor(None, service.idem.claim, key.id, idem, fingerprint, request_id, owner)
        if row is None:
            break  # ours: run it
        if row["fingerprint"] != fingerprint:
            raise ApiError(422, "idempotency_mismatch", "this Idempotency-Key was used with a different request body")
        if row["status"] is not None:
            return JSONResponse(row["body"], status_code=row["status"], headers={"Idempotent-Replayed": "true"})
        if not service.instances.alive(row["owner"]):
            if await loop.run_in_executor(None, service.idem.take_over, key.id, idem, row["owner"], owner):
                request_id = row["request_id"]
                return await _recover(service, key, req, idem, request_id)
            continue
        if time.monotonic() > deadline:
            raise ApiError(409, "in_progress", "a request with this Idempotency-Key is still running")
        await asyncio.sleep(0.05)
    return await _finish(service, key, req, idem, request_id, key_charged=False)


async def _finish(service: Service, key: KeyInfo, req: dict, idem: str, request_id: str, *, key_charged: bool):
    try:
        status, payload = await _run(service, key, req, request_id, key_charged=key_charged)
    except BaseException:
        await asyncio.get_running_loop().run_in_executor(None, service.idem.release, key.id, idem, service.instances.id)
        raise
    await asyncio.get_running_loop().run_in_executor(None, service.idem.complete, key.id, idem, status, payload)
    return JSONResponse(payload, status_code=status)


async def _recover(service: Service, key: KeyInfo, req: dict, idem: str, request_id: str):
    """A claim whose server died. If the dataset was charged for it, the images were released to
    nobody and are gone: answering again would need a new charge, so the stored answer says so. If
    only the key was charged, the request runs now without charging the key a second time."""
    loop = asyncio.get_running_loop()
    charged = await loop.run_in_executor(
        None, lambda: any(r.request_id == request_id for r in service.dataset.history())
    )
    if charged:
        payload = {
            "error": "result_lost",
            "detail": "the server stopped after this request was charged and before it answered; it is not "
            "charged again (send a new Idempotency-Key to generate anew)",
        }
        await loop.run_in_executor(None, service.idem.complete, key.id, idem, 500, payload)
        return JSONResponse(payload, status_code=500)
    key_charged = await loop.run_in_executor(
        None, lambda: any(r.request_id == request_id for r in service.key_ledger(key).history())
    )
    return await _finish(service, key, req, idem, request_id, key_charged=key_charged)


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run ``app`` under uvicorn until SIGINT/SIGTERM (uvicorn lets in-flight requests finish)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None)

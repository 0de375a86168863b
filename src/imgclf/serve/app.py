"""The web app: a page to drop images on, ``POST /predict``, ``GET /health`` and ``GET /card``.

``POST /predict`` takes a ``multipart/form-data`` body with one or more parts named ``file``:

* one file: 200 ``{"filename": str, "predictions": [{"class", "name", "probability"}, ...],
  "low_confidence": bool, "not_sure": bool, "not_sure_reason": null | "confidence" | "ood", "message": null | str}``,
  the top-k classes most probable first (a "not sure" answer's top guesses, its message "not sure: top guesses ...",
  when the model's thresholds chosen on val leave it unanswered: ``imgclf.abstain``); or 422 ``{"detail": str,
  "filename": str}`` when it is not an image, is truncated or would decode to more than ``--max-pixels``.
* several files: 200 ``{"results": [...]}``, one entry per file in upload order: the one-file object
  above, or ``{"filename": str, "error": str, "status": 422}`` for a file that cannot be classified.
* the whole request is refused (``{"detail": str}``) with 415 when it is not multipart, 400 when the
  body is malformed or truncated or has no ``file`` part, 413 over ``--max-upload-mb`` (a file),
  ``--max-request-mb`` (the body, counted as it streams) or ``--max-files``, 408 (and the connection
  closed) when the body comes slower than ``--body-timeout`` / ``--min-body-rate`` allow, 503 when the
  server is too busy to take it within ``queue_timeout`` seconds or holds as many bytes of uploads as
  it may, and 500 (the server stays up) when the model fails.

A body is read before the request takes one of the ``max_active`` turns (see ``pacing.py``): a slow
client never keeps a turn from a fast one.

``filename`` is the client's own name for the file, echoed as JSON data; it is never used as a path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgclf.abstain import Abstain, message, reasons
from imgclf.errors import ImgclfError
from imgclf.serve.model import top_k
from imgclf.serve.pacing import BodyBudget, Pace, paced
from imgclf.serve.uploads import Limits, Upload, UploadError, read_uploads
from imgclf.serve.worker import Busy, ModelFailure, ModelWorker

log = logging.getLogger(__name__)

# the page and its two assets, read once from the package: nothing else is served from disk
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@dataclass(frozen=True)
class Settings:
    """How the server answers; limits on what it takes."""

    top_k: int = 5
    min_confidence: float | None = None
    abstain: bool = True  # apply the model's "not sure" thresholds (imgclf.abstain), when it has any
    limits: Limits = field(default_factory=Limits)
    max_active: int = 4  # requests decoded and classified at once; the others wait their turn
    queue_timeout: float = 30.0  # seconds a request may wait for its turn before a 503
    pace: Pace = field(default_factory=Pace)  # how fast a body must come; it is read before the turn is taken


def create_app(worker: ModelWorker, card: dict[str, Any], settings: Settings) -> FastAPI:
    """The ASGI app around a started-on-startup :class:`ModelWorker`."""
    page = _page_files()
    admission = asyncio.Semaphore(settings.max_active)
    # the bodies in memory at once: what max_active bounded when they were read within a turn
    budget = BodyBudget(settings.max_active * settings.limits.max_request_bytes)
    classes = list(worker.predictor.classes)
    k = min(settings.top_k, len(classes))
    record = getattr(worker.predictor, "abstain", None) if settings.abstain else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        log.info("serving %s (%d classes), top-%d, limits %s", card["model"], len(classes), k, settings.limits)
        yield
        worker.close()

    # no /docs or /redoc: they load their scripts from a CDN, and the page must work offline
    app = FastAPI(title="imgclf", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=NO_STORE)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises it after this answer is sent, and uvicorn logs its traceback: the server stays up
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); the server logged it"},
            status_code=500,
            headers=NO_STORE,
        )

    @app.get("/", response_class=HTMLResponse)
    async def index() -> Response:
        return Response(page["index.html"], media_type="text/html; charset=utf-8", headers=NO_STORE)

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:  # a fixed set of names: the request's path never reaches the file system
            return JSONResponse({"detail": "not found"}, status_code=404)
        return Response(page[name], media_type=STATIC[name], headers=NO_STORE)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": card["model"],
            "classes": len(classes),
            "served": {"images": worker.images, "batches": worker.batches},
        }

    @app.get("/card")
    async def model_card() -> dict[str, Any]:
        return {
            **card,
            "top_k": k,
            "min_confidence": settings.min_confidence,
            "abstain": record.to_dict() if record is not None and record.active else None,
            "limits": asdict(settings.limits),
        }

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        share = budget.share()
        try:  # the whole body first, under its pace; a turn only for a request that has all its files
            body = paced(request.receive, settings.pace)
            uploads = await read_uploads(dict(request.headers), body, settings.limits, hold=share.take)
            return await answer(uploads)
        except UploadError as exc:
            # a 408's body is still coming: closing the connection is the only way to stop reading it
            return _error(exc.status, str(exc), headers={"Connection": "close"} if exc.status == 408 else {})
        finally:
            share.release()

    async def answer(uploads: list[Upload]) -> JSONResponse:
        try:
            await asyncio.wait_for(admission.acquire(), settings.queue_timeout)
        except asyncio.TimeoutError:  # TimeoutError itself only from Python 3.11
            return _error(503, f"the server is busy (no turn within {settings.queue_timeout:g} s); retry shortly")
        try:
            results = await _classify(worker, uploads, classes, k, settings.min_confidence, record)
        except Busy as exc:
            return _error(503, str(exc))
        except ModelFailure as exc:
            return _error(500, str(exc))
        finally:
            admission.release()
        if len(results) > 1:
            return JSONResponse({"results": results})
        only = results[0]
        if "error" in only:
            return _error(only["status"], only["error"], filename=only["filename"])
        return JSONResponse(only)

    return app


async def _classify(
    worker: ModelWorker,
    uploads: list[Upload],
    classes: list[str],
    k: int,
    min_confidence: float | None,
    record: Abstain | None = None,
) -> list[dict[str, Any]]:
    """One result per upload, in order: its top-k (and whether it is "not sure"), or why it could not be classified."""
    decoded = await asyncio.gather(*(_decode(worker, i, u) for i, u in enumerate(uploads)))
    good = [image for image in decoded if not isinstance(image, str)]
    probs, ood = await worker.classify(good) if good else (np.zeros((0, len(classes))), [])
    scores = None if not ood or ood[0] is None else np.asarray(ood, dtype=np.float64)
    whys = iter(reasons(probs.max(axis=1), scores, record) if good else [])
    rows = iter(probs)
    names = worker.predictor.display_names
    results = []
    for upload, image in zip(uploads, decoded, strict=True):
        if isinstance(image, str):
            results.append({"filename": upload.name, "error": image, "status": 422})
            continue
        top = top_k(next(rows), classes, names, k)
        low = min_confidence is not None and top[0]["probability"] < min_confidence
        why = next(whys)
        results.append(
            {
                "filename": upload.name,
                "predictions": top,
                "low_confidence": low,
                "not_sure": why is not None,
                "not_sure_reason": why,
                "message": message(why, [p["name"] for p in top]),
            }
        )
    return results


async def _decode(worker: ModelWorker, index: int, upload: Upload) -> Any:
    """The decoded image, or (a string) why it cannot be: the message names the file by its position only."""
    label = f"file {index + 1}"  # the client's name is not passed on: not even as a label that could be opened
    try:
        return await worker.decode(label, upload.data)
    except ImgclfError as exc:
        # the loader's messages speak to predict.py's user (its option, "remove or replace the file"); reworded
        message = str(exc).removeprefix(f"{label}: ").removesuffix("; remove or replace the file")
        return message.replace("predict.py --max-pixels", "the server's --max-pixels")
    except Exception as exc:  # noqa: BLE001  whatever an upload makes a decoder raise is the upload's fault
        log.warning("%s (%d bytes) could not be decoded: %s: %s", label, len(upload.data), type(exc).__name__, exc)
        return f"cannot be read as an image ({type(exc).__name__})"


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status, headers={**NO_STORE, **(headers or {})})


def _page_files() -> dict[str, bytes]:
    folder = resources.files("imgclf.serve") / "static"
    return {name: (folder / name).read_bytes() for name in ("index.html", *STATIC)}

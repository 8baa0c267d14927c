"""`agestimate serve`: an HTTP API and a web page over one `Estimator` per worker process.

Endpoints only convert: bytes in -> `load_image` -> `Estimator.predict` -> `Face.to_dict()` out.
Every request that decodes an image takes a slot of a bounded work queue first; when all slots
are taken it is answered 503 at once, before its upload is read, so overload never grows memory.
Inference runs in one thread per worker (the face models use every core already); scale out
with ``workers``. Nothing here fetches a URL a client sends: images come in the request only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Literal

import cv2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline

from agestimate import __version__
from agestimate.errors import ImageLoadError
from agestimate.estimator import Estimator, model_folder
from agestimate.io.drawing import draw_faces
from agestimate.io.images import DEFAULT_MAX_PIXELS, load_image

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_QUEUE_SIZE = 16
OPTIONS_VARIABLE = "AGESTIMATE_SERVE_OPTIONS"  # how `serve` hands its options to worker processes

# The one place where the library's image error kinds become HTTP status codes.
STATUS_BY_KIND = {"not an image": 415, "too large": 413, "empty": 422, "corrupt": 422}

IMAGE_BODY = {"type": "string", "format": "binary"}
UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "description": "The image (JPEG, PNG, WebP, BMP, TIFF, ...) as a multipart upload (field `file`) or as the raw body.",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {"file": IMAGE_BODY}, "required": ["file"]}},
            "application/octet-stream": {"schema": IMAGE_BODY},
            "image/*": {"schema": IMAGE_BODY},
        },
    }
}
ERROR_DOC = {
    status: {"description": meaning, "content": {"application/json": {"example": {"detail": "photo.jpg: " + reason, "reason": reason, "kind": kind}}}}
    for status, meaning, reason, kind in [
        (413, "Upload over the size limit, or more pixels than the pixel limit",
         "8000x6000 = 48000000 pixels exceeds the limit of 40000000 (max_pixels)", "too large"),
        (415, "Not an image format this server reads", "not a recognised image format", "not an image"),
        (422, "An empty or corrupt image, or a form without a file", "cannot decode image (image file is truncated)", "corrupt"),
        (503, "Every slot of the work queue is taken: retry after the Retry-After seconds",
         "busy: 16 requests in work (queue_size); retry shortly", "overloaded"),
    ]
}


@dataclass(frozen=True)
class ServeOptions:
    """What a worker process needs to build its app (see `create_app` for the meaning)."""

    model: str | None = None
    backend: str | None = None
    precision: str = "auto"
    threads: int | None = None
    max_faces: int | None = None
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    queue_size: int = DEFAULT_QUEUE_SIZE

    def __post_init__(self):
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {self.queue_size}")
        if self.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be positive, got {self.max_upload_mb}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class ServiceError(Exception):
    """A request the service refuses: an HTTP status, a reason and a kind, answered as JSON."""

    def __init__(self, status: int, reason: str, kind: str, *, name: str | None = None, headers: dict | None = None):
        super().__init__(reason)
        self.status, self.reason, self.kind, self.name, self.headers = status, reason, kind, name, headers

    def response(self) -> JSONResponse:
        detail = f"{self.name}: {self.reason}" if self.name else self.reason
        return JSONResponse({"detail": detail, "reason": self.reason, "kind": self.kind}, self.status, headers=self.headers)

    @classmethod
    def from_image_error(cls, error: ImageLoadError, name: str) -> ServiceError:
        return cls(STATUS_BY_KIND.get(error.kind, 422), error.reason, error.kind, name=name)


class WorkQueue:
    """At most `size` requests in work at once (reading, waiting or computing); more are refused.

    Used from the event loop only, so a plain counter is enough.
    """

    def __init__(self, size: int):
        self.size, self.busy = size, 0

    @contextlib.contextmanager
    def slot(self):
        if self.busy >= self.size:
            raise ServiceError(503, f"busy: {self.busy} requests in work (queue_size); retry shortly", "overloaded",
                               headers={"Retry-After": "1"})
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1


class UploadLimit:
    """ASGI middleware: request bodies over `max_bytes` are answered 413, by their Content-Length
    before anything is read, else as soon as the stream passes the limit."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: str) -> ServiceError:
        limit = f"{self.max_bytes / 1024 / 1024:g} MB"
        return ServiceError(413, f"upload of {size} exceeds the limit of {limit} (max_upload_mb)", "upload too large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(f"{int(declared)} bytes").response()(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large(f"more than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


class RequestLog:
    """ASGI middleware: one log line per request: method, path, status, faces, milliseconds."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def logged_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            faces = scope.get("state", {}).get("faces", "-")
            logger.info("%s %s %d faces=%s %.1f ms", scope["method"], scope["path"], status, faces,
                        1000 * (time.perf_counter() - started))


@dataclass
class Service:
    """What the endpoints share in one worker: the estimator, its thread and the work queue."""

    estimator: Estimator
    options: ServeOptions
    executor: ThreadPoolExecutor
    queue: WorkQueue

    async def run(self, function, *args):
        """`function(*args)` on the inference thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    def decode(self, data: bytes, name: str):
        try:
            return load_image(data, max_pixels=self.options.max_pixels)
        except ImageLoadError as error:
            raise ServiceError.from_image_error(error, name) from error


async def read_upload(request: Request) -> tuple[bytes, str]:
    """The image bytes of a request and a name for messages: the file of a multipart form (field
    `file` in the docs, any name accepted), else the raw body."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=16) as form:
            upload = next((value for _, value in form.multi_items() if not isinstance(value, str)), None)
            if upload is None:
                raise ServiceError(422, "no file in the form: send the image as the multipart field 'file' "
                                        "or as the request body", "no file")
            return await upload.read(), upload.filename or "upload"
    return await request.body(), "request body"


def create_app(model=None, *, backend: str | None = None, precision: str = "auto", threads: int | None = None,
               max_faces: int | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, queue_size: int = DEFAULT_QUEUE_SIZE,
               estimator: Estimator | None = None) -> FastAPI:
    """The FastAPI app: ``POST /v1/predict``, ``POST /v1/annotate``, ``GET /v1/health``,
    ``GET /v1/model``, the page at ``/`` and the OpenAPI docs at ``/docs`` (assets served locally).

    Parameters
    ----------
    model : folder or shipped model name (see `Estimator`); loaded when the app starts.
    backend, precision, threads, max_faces : see `Estimator`.
    max_upload_mb : larger request bodies are answered 413.
    max_pixels : larger images are answered 413 before they are decoded (None: no limit).
    queue_size : requests in work at once; more are answered 503 with Retry-After.
    estimator : use this estimator instead of loading `model` (tests, embedding in another app).
    """
    options = ServeOptions(model=None if model is None else str(model), backend=backend, precision=precision,
                           threads=threads, max_faces=max_faces, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                           queue_size=queue_size)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loaded = estimator or Estimator(options.model, backend=options.backend, precision=options.precision,
                                        threads=options.threads, max_faces=options.max_faces)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="agestimate-inference") as executor:
            app.state.service = Service(loaded, options, executor, WorkQueue(options.queue_size))
            runtime = loaded.encoder.runtime
            logger.info("model %s loaded (%s %s); queue of %d, uploads up to %g MB", options.model or "default",
                        runtime.backend, runtime.precision, options.queue_size, options.max_upload_mb)
            yield

    app = FastAPIOffline(title="agestimate", version=__version__, lifespan=lifespan,
                         swagger_ui_parameters={"validatorUrl": None},  # its badge is an image from outside
                         description="Age and gender of every face in an image. Images come in the request "
                                     "only (multipart field `file` or the raw body); no URL is ever fetched.")
    app.add_middleware(UploadLimit, max_bytes=options.max_upload_bytes)
    app.add_middleware(RequestLog)  # outermost: logs the 413s of UploadLimit too

    @app.exception_handler(ServiceError)
    async def refused(request: Request, error: ServiceError) -> JSONResponse:
        return error.response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)  # the traceback stays in the log
        return JSONResponse({"detail": "internal error (see the server log)", "kind": "internal"}, 500)

    page = resources.files("agestimate.apps").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/v1/health", summary="Whether the model is loaded, and the limits")
    async def health(request: Request) -> dict:
        service: Service = request.app.state.service
        return {"status": "ok", "busy": service.queue.busy, "queue_size": options.queue_size,
                "max_upload_mb": options.max_upload_mb, "max_pixels": options.max_pixels,
                "max_faces": options.max_faces, "pid": os.getpid()}

    @app.get("/v1/model", summary="The model card's summary and the runtime")
    async def model_summary(request: Request) -> dict:
        service: Service = request.app.state.service
        return summarise_model(service.estimator, options.model)

    @app.post("/v1/predict", summary="Age and gender of every face in an image", openapi_extra=UPLOAD_DOC,
              responses=ERROR_DOC)
    async def predict(request: Request) -> dict:
        """The image size and one entry per face, largest first, as `Face.to_dict()` gives it:
        box (x1, y1, x2, y2) and landmarks in image pixels, age, age_spread, age_interval (80%),
        age_group, gender, gender_probability, confidence, detection score and method."""
        service: Service = request.app.state.service
        with service.queue.slot():
            data, name = await read_upload(request)
            faces, (height, width) = await service.run(_predict, service, data, name)
        request.state.faces = len(faces)
        return {"image": {"width": width, "height": height}, "faces": [face.to_dict() for face in faces]}

    @app.post("/v1/annotate", summary="The image with its faces drawn", openapi_extra=UPLOAD_DOC,
              responses={**ERROR_DOC, 200: {"content": {"image/jpeg": {}, "image/png": {}},
                                            "description": "The annotated image; the header X-Faces counts the faces."}},
              response_class=Response)
    async def annotate(request: Request, format: Literal["jpeg", "png"] = "jpeg") -> Response:
        service: Service = request.app.state.service
        with service.queue.slot():
            data, name = await read_upload(request)
            encoded, count = await service.run(_annotate, service, data, name, format)
        request.state.faces = count
        return Response(encoded, media_type=f"image/{format}", headers={"X-Faces": str(count)})

    return app


def _predict(service: Service, data: bytes, name: str):
    image = service.decode(data, name)
    return service.estimator.predict(image), image.shape[:2]


def _annotate(service: Service, data: bytes, name: str, format: str):
    image = service.decode(data, name)
    faces = service.estimator.predict(image)
    drawn = cv2.cvtColor(draw_faces(image, faces), cv2.COLOR_RGB2BGR)
    parameters = [cv2.IMWRITE_JPEG_QUALITY, 90] if format == "jpeg" else []
    ok, encoded = cv2.imencode(f".{format.replace('jpeg', 'jpg')}", drawn, parameters)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the annotated image as {format}")
    return encoded.tobytes(), len(faces)


def summarise_model(estimator: Estimator, model=None) -> dict:
    """What a client may want to know of the model: name, descriptor, ages, test metrics, runtime."""
    card = estimator.heads.card
    keep = ("n", "mae", "cs5", "gender_accuracy", "mae_60plus")
    return {
        "model": str(model or "default"),
        "descriptor": card.get("descriptor"),
        "max_age": card["max_age"],
        "gender": estimator.heads.uses_gender,
        "metrics": {split: {key: values[key] for key in keep if key in values}
                    for split, values in card.get("metrics", {}).items() if split != "train"},
        "trained_with": card.get("command"),
        "licence": card.get("licence"),
        "versions": card.get("versions"),
        "runtime": estimator.encoder.runtime.as_dict(),
    }


def app_from_environment() -> FastAPI:
    """The app of a worker process started by `serve` (uvicorn's factory): options from the environment."""
    return create_app(**json.loads(os.environ.get(OPTIONS_VARIABLE, "{}")))


def log_config() -> dict:
    """uvicorn's logging, plus this module's one line per request on stderr (uvicorn's access log is off)."""
    from uvicorn.config import LOGGING_CONFIG

    config = json.loads(json.dumps(LOGGING_CONFIG))
    config["formatters"]["request"] = {"format": "%(asctime)s %(levelname)s %(message)s"}
    config["handlers"]["request"] = {"formatter": "request", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    config["loggers"]["agestimate"] = {"handlers": ["request"], "level": "INFO", "propagate": False}
    return config


def serve(model=None, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, backend: str | None = None,
          precision: str = "auto", threads: int | None = None, max_faces: int | None = None,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_pixels: int | None = DEFAULT_MAX_PIXELS,
          queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
    """Run the app with uvicorn until interrupted; each of `workers` processes loads the model once.

    `threads` defaults to the cores shared out between the workers when there are several. The
    model card is checked here, so a wrong `model` fails before the server starts.
    """
    from uvicorn import run

    from agestimate.heads.model import AgeGenderHeads

    AgeGenderHeads.load(model_folder(model))  # raises ModelFileError with the reason
    if threads is None and workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
    options = ServeOptions(model=None if model is None else str(model), backend=backend, precision=precision,
                           threads=threads, max_faces=max_faces, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                           queue_size=queue_size)
    os.environ[OPTIONS_VARIABLE] = json.dumps(asdict(options))
    run("agestimate.apps.serve:app_from_environment", factory=True, host=host, port=port, workers=workers,
        log_config=log_config(), access_log=False)

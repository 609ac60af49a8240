"""The HTTP service of ``retrieve serve``: the public API (a Retriever) over HTTP, and a web page.

The index and its network are opened once, when the app is made, and shared by every request:
each store serialises its own calls between threads (one search or write at a time), while
images are decoded and embedded in the requests' threads side by side. Writes by other processes
(a ``retrieve enroll`` in another terminal) are seen by the next query: the store compares its
generation with the records' on every search.

Photos enrolled through the service are kept in ``INDEX/uploads/<sha256 prefix>/<name>`` (the
path the index records for them); a photo to classify is decoded from the request's bytes.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from swagger_ui_bundle import swagger_ui_path

from index import IndexLockedError, IndexStoreError, Item, one_line
from retrieval.api import Retriever
from retrieval.datasets.folders import MAX_LABEL_LENGTH, label_pattern, validate_label
from retrieval.engine.images import MAX_FULL_PIXELS, MAX_PIXELS, thumbnail_jpeg
from retrieval.errors import ImageError, InputError, NotFoundError, RetrieveError
from retrieval.faces.guard import LOOPBACK_NAMES, Guard, token_check
from retrieval.indexing import uploads
from retrieval.indexing.ingest import CHUNK
from retrieval.results import Answer

THUMB_SIDE = 160
DEFAULT_MAX_UPLOAD_MB = 32
MAX_FILES = CHUNK  # one enrolment request is one commit: all of it or nothing


class Gallery:
    """The index opened once (a Retriever, its network loaded at start-up); what a request
    calls."""

    def __init__(self, index_dir: str | Path) -> None:
        self.index_dir = Path(index_dir)
        self.retriever = Retriever(index_dir).load()
        # Held by a request that adds or deletes files under uploads/ from before it changes the
        # index until its files match it, so that no other one deletes a file it records.
        self._uploads_lock = threading.Lock()

    def close(self) -> None:
        self.retriever.close()

    def query(self, upload: UploadFile, *, k: int, min_score: float | None, method: str) -> Answer:
        name = upload.filename or "upload"
        data = upload.file.read()
        return self.retriever.answer(data, name=name, k=k, min_score=min_score, vote=method)

    def enroll(self, label: str, files: Sequence[UploadFile]) -> dict[str, Any]:
        """Enrol the uploaded photos under ``label`` (the rules of ``retrieve enroll``); the
        photos that are not added (unreadable, already indexed) are not kept."""
        validate_label(label)
        if len(files) > MAX_FILES:
            raise InputError(f"{len(files)} files in one request; send at most {MAX_FILES}")
        with self._uploads_lock, uploads.pending(self.index_dir):
            stored: list[uploads.Stored] = []
            report = None
            try:
                for f in files:
                    stored.append(uploads.store(self.index_dir, f.filename, f.file.read()))
                report = self.retriever.enroll_files(label, [s.path for s in stored])
            finally:
                uploads.discard(stored, report.added if report else ())
        names = {str(s.path): s.name for s in stored}

        def entries(pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
            return [
                {"file": names.get(p, p), "reason": reason.replace(p, names.get(p, p))}
                for p, reason in pairs
            ]

        return {
            "label": label,
            "added": [names[p] for p in report.added],
            "duplicates": entries(report.duplicates),
            "skipped": entries(report.skipped),
            "count": report.total_for_label,
        }

    def remove(self, *, label: str | None, path: str | None) -> list[Item]:
        """Remove a label or the item(s) at a path; photos enrolled through the service go
        from INDEX/uploads with their items."""
        with self._uploads_lock:
            return self.retriever.remove(label=label, path=path)

    def thumbnail(self, item_id: int) -> bytes:
        found = self.retriever.items([item_id])
        if not found:
            raise HTTPException(404, f"no item with id {item_id} in {self.index_dir}")
        try:
            return thumbnail_jpeg(found[0].path, THUMB_SIDE)
        except ImageError as exc:  # the same answer whatever the reason: it reveals no path
            raise HTTPException(404, f"item {item_id} has no readable image") from exc

    def labels(self) -> dict[str, int]:
        return self.retriever.labels()

    def health(self) -> dict[str, Any]:
        info = self.retriever.info()
        return {
            "ok": True,
            "count": info.count,
            "model": info.model,
            "index": str(self.index_dir.resolve()),
        }


def _removed(items: list[Item]) -> dict[str, Any]:
    return {
        "removed": len(items),
        "items": [{"id": i.id, "label": i.label, "path": i.path} for i in items],
    }


def _web_root() -> Path:
    return Path(str(resources.files("retrieval.faces") / "web"))


IMAGE_TYPES = "image/jpeg, image/png, image/bmp, image/gif, image/webp, image/tiff"
IMAGE_RULE = (
    "An image file: JPEG, PNG, BMP, GIF, WebP or TIFF, of at most "
    f"{MAX_PIXELS // 1_000_000} megapixels for a JPEG and {MAX_FULL_PIXELS // 1_000_000} for "
    "the others; another file is answered 422, naming it."
)
MAX_K = 1000


class Error(BaseModel):
    """Every error the service answers: one line, naming the file, field or item at fault."""

    detail: str


class NeighborOut(BaseModel):
    path: str
    label: str
    score: float
    id: int | None = Field(description="The item's id in the index; null in a sharded index")


class AnswerOut(BaseModel):
    """The JSON of `retrieve query --json`."""

    query: str = Field(description="The uploaded file's name")
    label: str | None = Field(
        description="The label; null: unknown (like no label of the index, or under min_score)"
    )
    confidence: float = Field(
        description="Estimated probability that the label is right (for an unknown answer: "
        "that the best label would be wrong)"
    )
    vote_share: float = Field(description="The label's share of the neighbours' weighted vote")
    decision: float | None = Field(
        description="The open-set score compared with the index's threshold (null: empty index)"
    )
    unknown_because: str | None = Field(description="Why the answer is unknown, in one line")
    rerank: str = Field(
        description="How the neighbours were re-ranked (none, dba, qe, dba+qe, kr): the index's "
        "setting; the label is decided before"
    )
    neighbors: list[NeighborOut] = Field(description="Best first, by their re-ranked scores")


class FileNote(BaseModel):
    file: str
    reason: str


class EnrollOut(BaseModel):
    label: str
    added: list[str] = Field(description="Names of the files added")
    duplicates: list[FileNote] = Field(description="Files whose content is indexed already")
    skipped: list[FileNote] = Field(description="Files that could not be read")
    count: int = Field(description="The label's items now")


class ItemOut(BaseModel):
    id: int
    label: str
    path: str


class RemovedOut(BaseModel):
    removed: int
    items: list[ItemOut]


class HealthOut(BaseModel):
    ok: bool
    count: int
    model: str
    index: str


_WHY = {
    400: "The Host header is not a name of this service (see --allow-host)",
    401: "A write without the service's access token (--token)",
    403: "A request from another origin (a page of another site)",
    404: "No such item, label or path",
    413: "The request body is over --max-upload-mb",
    422: "A bad parameter, label or file (one line naming it)",
    500: "The index is damaged (one line naming its file)",
    503: "The index is locked by another writer for too long; try again",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The responses of an operation for these statuses, each an Error."""
    return {status: {"model": Error, "description": _WHY[status]} for status in statuses}


def _images(field: str) -> dict[str, Any]:
    """openapi_extra: the multipart part ``field`` holds images of IMAGE_TYPES."""
    return {
        "requestBody": {
            "content": {"multipart/form-data": {"encoding": {field: {"contentType": IMAGE_TYPES}}}}
        }
    }


def _one_line(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: where, and what is wrong."""
    where = {"query": "query parameter", "path": "path parameter", "body": "form field"}
    parts = []
    for error in exc.errors():
        loc = [str(x) for x in error.get("loc", ())]
        place = f"{where.get(loc[0], loc[0])} {'.'.join(loc[1:])}".strip() if loc else "request"
        parts.append(f"{place}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(
    index_dir: str | Path,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    token: str | None = None,
    allowed_hosts: Iterable[str] = LOOPBACK_NAMES,
) -> FastAPI:
    """The service over the index at ``index_dir``, opened now (with its network): a bad index
    fails here, before anything listens. Request bodies over ``max_upload_mb`` MiB get 413.
    A Host header not in ``allowed_hosts`` ("*": any) gets 400, a cross-origin request that is
    not a GET 403 (guard.py); with ``token``, writes without it get 401. Every error is
    ``{"detail": "one line"}``, and /openapi.json documents every status an operation answers."""
    gallery = Gallery(index_dir)
    writes = [] if token is None else [Depends(token_check(token))]
    write_errors = (401,) if token is not None else ()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        gallery.close()

    app = FastAPI(
        title="retrieve",
        summary="Fine-grained recognition by retrieval: query, enrol, remove.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        max_body_size=int(max_upload_mb * 1024 * 1024),
    )
    app.state.gallery = gallery
    app.add_middleware(Guard, hosts=allowed_hosts)

    @app.exception_handler(RetrieveError)
    async def bad_input(_: Request, exc: RetrieveError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(NotFoundError)
    async def not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": one_line(_one_line(exc))}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:  # Allow: the methods of every route of that path, not one's
            path = request.url.path
            allowed = {
                m
                for r in app.routes
                if isinstance(r, APIRoute) and r.path_regex.match(path)
                for m in r.methods
            }
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(allowed))}
        return await http_exception_handler(request, exc)

    @app.exception_handler(IndexStoreError)
    async def index_error(_: Request, exc: IndexStoreError) -> JSONResponse:
        status = 503 if isinstance(exc, IndexLockedError) else 500
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.post(
        "/query",
        summary="Classify an uploaded photo (the JSON of `retrieve query --json`)",
        response_model=AnswerOut,
        responses=_errors(400, 403, 413, 422, 500),
        openapi_extra=_images("file"),
    )
    def query(
        file: Annotated[UploadFile, File(description=f"The photo to classify. {IMAGE_RULE}")],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="Neighbours that vote")] = 5,
        min_score: Annotated[
            float | None,
            Query(
                allow_inf_nan=False,
                description="'unknown' below this best cosine score, instead of the index's own "
                "calibrated rule (0: never unknown)",
            ),
        ] = None,
        vote: Annotated[Literal["prototype", "weighted", "majority"], Query()] = "prototype",
    ) -> dict[str, Any]:
        return gallery.query(file, k=k, min_score=min_score, method=vote).to_json()

    @app.post(
        "/enroll",
        summary="Add uploaded photos under a label (`retrieve enroll`)",
        dependencies=writes,
        response_model=EnrollOut,
        responses=_errors(400, *write_errors, 403, 413, 422, 500, 503),
        openapi_extra=_images("files"),
    )
    def enroll(
        label: Annotated[
            str,
            Form(
                description="A new or existing label: 1 to 200 characters, no '/' or '\\', no "
                "control or invisible character (Unicode's categories Cc, Cf, Cs), no white "
                "space at either end",
                json_schema_extra={
                    "minLength": 1,
                    "maxLength": MAX_LABEL_LENGTH,
                    "pattern": label_pattern(),
                },
            ),
        ],
        files: Annotated[
            list[UploadFile],
            File(
                description=f"The photos, 1 to {MAX_FILES}. {IMAGE_RULE} Files that cannot be "
                "read are skipped and reported; if none can be, 422.",
                json_schema_extra={"minItems": 1, "maxItems": MAX_FILES},
            ),
        ],
    ) -> dict[str, Any]:
        return gallery.enroll(label, files)

    removal: dict[str, Any] = {
        "dependencies": writes,
        "response_model": RemovedOut,
        "responses": _errors(400, *write_errors, 403, 404, 422, 500, 503),
    }

    @app.delete(
        "/labels", summary="Remove every item of a label (`retrieve remove --label`)", **removal
    )
    def remove_label(
        label: Annotated[str, Query(min_length=1, description="The label to remove")],
    ) -> dict[str, Any]:
        return _removed(gallery.remove(label=label, path=None))

    @app.delete(
        "/items",
        summary="Remove the item(s) of a photo by its path (`retrieve remove --path`)",
        **removal,
    )
    def remove_path(
        path: Annotated[
            str, Query(min_length=1, description="The path the index records for the photo")
        ],
    ) -> dict[str, Any]:
        return _removed(gallery.remove(label=None, path=path))

    @app.get("/labels", summary="Number of items per label", responses=_errors(400, 500))
    def labels() -> dict[str, int]:
        return gallery.labels()

    @app.get(
        "/health",
        summary="Whether the service is up, and what it serves",
        response_model=HealthOut,
        responses=_errors(400, 500),
    )
    def health() -> dict[str, Any]:
        return gallery.health()

    @app.get(
        "/items/{item_id}/thumb",
        summary="A small JPEG of a gallery item",
        response_class=Response,
        responses={
            200: {"content": {"image/jpeg": {}}, "description": "A JPEG of at most 160x160"},
            **_errors(400, 404, 422, 500),
        },
    )
    def thumb(item_id: int) -> Response:
        return Response(
            gallery.thumbnail(item_id),
            media_type="image/jpeg",
            headers={"Cache-Control": "max-age=3600"},
        )

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="retrieve — API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon-32x32.png",
        )

    app.mount("/docs-static", StaticFiles(directory=swagger_ui_path), name="docs-static")
    web = _web_root()

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(web / "index.html")

    app.mount("/static", StaticFiles(directory=web), name="static")
    return app

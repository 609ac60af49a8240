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
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from index import IndexLockedError, IndexStoreError, Item
from retrieval.api import Retriever
from retrieval.datasets.folders import validate_label
from retrieval.engine.images import thumbnail_jpeg
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

    def query(self, upload: UploadFile, *, k: int, min_score: float, method: str) -> Answer:
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


def _web_root() -> Path:
    return Path(str(resources.files("retrieval.faces") / "web"))


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
    not a GET 403 (guard.py); with ``token``, writes without it get 401."""
    gallery = Gallery(index_dir)
    writes = [] if token is None else [Depends(token_check(token))]

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

    @app.exception_handler(IndexStoreError)
    async def index_error(_: Request, exc: IndexStoreError) -> JSONResponse:
        status = 503 if isinstance(exc, IndexLockedError) else 500
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.post("/query", summary="Classify an uploaded photo (the JSON of `retrieve query --json`)")
    def query(
        file: Annotated[UploadFile, File(description="The photo to classify")],
        k: Annotated[int, Query(ge=1, description="Neighbours that vote")] = 5,
        min_score: Annotated[float, Query(description="'unknown' below this best score")] = 0.0,
        vote: Annotated[Literal["weighted", "majority"], Query()] = "weighted",
    ) -> dict[str, Any]:
        return gallery.query(file, k=k, min_score=min_score, method=vote).to_json()

    @app.post(
        "/enroll",
        summary="Add uploaded photos under a label (`retrieve enroll`)",
        dependencies=writes,
    )
    def enroll(
        label: Annotated[str, Form(description="New or existing label")],
        files: Annotated[list[UploadFile], File(description="One or more photos")],
    ) -> dict[str, Any]:
        return gallery.enroll(label, files)

    @app.delete(
        "/items", summary="Remove a label or one photo (`retrieve remove`)", dependencies=writes
    )
    def remove(label: str | None = None, path: str | None = None) -> dict[str, Any]:
        gone = gallery.remove(label=label, path=path)
        return {
            "removed": len(gone),
            "items": [{"id": i.id, "label": i.label, "path": i.path} for i in gone],
        }

    @app.get("/labels", summary="Number of items per label")
    def labels() -> dict[str, int]:
        return gallery.labels()

    @app.get("/health", summary="Whether the service is up, and what it serves")
    def health() -> dict[str, Any]:
        return gallery.health()

    @app.get(
        "/items/{item_id}/thumb",
        summary="A small JPEG of a gallery item",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
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

"""A web viewer for the bundle: upload DICOMs and see the mask, the Grad-CAM heatmap and the probability; browse an
inference output folder as a worklist.

    python -m scripts.serving.viewer --ckpt_dir models [--results runs/inference] [--host 127.0.0.1] [--port 8080] \\
        [--override configs/demo.json --override configs/demo_inference.json] [--max_upload_mb 100]

(``make viewer CKPT_DIR=... RESULTS=... PORT=...``). It serves, on ``127.0.0.1`` unless told otherwise:

* ``GET /``: one plain HTML page (``viewer_page.html``, vanilla JavaScript, no build step) that calls the JSON API
  below: upload one or several DICOM files and see, for each, the radiograph with the predicted mask outlined, the
  Grad-CAM heatmap, the image's probability and the mask's area, with download links for the mask PNG, the RLE row
  and the DICOM SEG; with ``--results``, the worklist of that folder (most probable first, thumbnails; a click shows
  the image in full).
* ``POST /api/predict`` (multipart field ``file``: one DICOM) -> ``{"image_id": SOPInstanceUID, "probability",
  "area" (pixels), "positive", "rle", "links": {"mask", "seg", "overlay", "heatmap", "rle"}, "problems"}``; a link
  is null where the file does not exist (no SEG for a negative image). A file that is not DICOM gets 415, one too
  large (``--max_upload_mb``, or more pixels than ``max_image_pixels``) 413, one that cannot be loaded or that the
  input rules leave out (RGB, truncated, a lateral view) 422, each with ``{"detail": reason}``.
* ``GET /api/worklist``: the ``--results`` folder's images as the same JSON objects, most probable first.
* ``GET /api/info``: the model (checkpoints, thresholds, gate) and the upload bound; ``GET /docs``: the API's
  OpenAPI page (FastAPI's).
* ``GET /files/<token>/...`` (an upload's files) and ``GET /results/...`` (the worklist folder's).

Every upload runs the bundle's own inference pipeline (``scripts.serving.viewer_pipeline``), so it gets what
``python -m monai.bundle run ... inference.json`` writes for that file. The network is one shared object: uploads
are accepted concurrently, and their forward passes run one at a time. Each upload's outputs go into a folder of
their own, named by a random token (its links), never by the image's identifiers; the newest ``--keep`` are kept.
Logs name a request by its number and its SOPInstanceUID, never by patient data or file name.

Why FastAPI and one HTML page: the JSON API is the product (scripts and PACS glue call it) and FastAPI documents it
at ``/docs`` for free; the page is a thin client of that same API, with no JavaScript framework and no build step.
Gradio would bring a large dependency and hide the API behind its own protocol.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import Headers

from scripts.inference.writer import RESULT_NAMES
from scripts.serving.viewer_pipeline import RejectedInput, ViewerPipeline
from scripts.serving.viewer_results import FILE_KINDS, ImageResult, read_result_folder
from scripts.siim.rle_csv import write_rle_csv
from scripts.utils.errors import error_reason
from scripts.utils.files import atomic_open

__all__ = ["create_app", "main"]

logger = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("viewer_page.html")
MIB = 1 << 20
#: Room for the multipart envelope around the file itself.
_MULTIPART_OVERHEAD = 64 << 10
_MEDIA_TYPES = {".png": "image/png", ".dcm": "application/dicom", ".csv": "text/csv", ".json": "application/json"}


class _Uploads:
    """The newest ``keep`` uploads' folders, by token; older ones are removed."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root, self.keep = root, max(1, int(keep))
        self._folders: OrderedDict[str, Path] = OrderedDict()
        self._lock = threading.Lock()
        self.numbers = itertools.count(1)

    def new(self) -> tuple[str, Path]:
        token = secrets.token_urlsafe(18)
        folder = self.root / token
        folder.mkdir(parents=True)
        return token, folder

    def add(self, token: str, folder: Path) -> None:
        with self._lock:
            self._folders[token] = folder
            while len(self._folders) > self.keep:
                _, old = self._folders.popitem(last=False)
                shutil.rmtree(old, ignore_errors=True)

    def folder(self, token: str) -> Path | None:
        with self._lock:
            return self._folders.get(token)


def create_app(pipeline: ViewerPipeline, results: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None,
               max_upload_mb: float = 100, keep: int = 200):  # fmt: skip
    """The viewer's FastAPI application (see the module docstring).

    Args:
        pipeline: the model (:class:`~scripts.serving.viewer_pipeline.ViewerPipeline`).
        results: an inference output folder to show as a worklist, or None.
        workdir: where uploads' outputs go (default: a new temporary folder, removed when the server stops).
        max_upload_mb: the largest request body accepted, in MiB (413 beyond it, before it is all read).
        keep: how many uploads' outputs are kept (the oldest are removed).
    """
    temporary = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="siim-viewer-")) if temporary else Path(workdir)
    results = Path(results).resolve() if results is not None else None
    uploads = _Uploads(workdir / "uploads", keep)
    limit = int(max_upload_mb * MIB)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        if temporary:  # at shutdown (uvicorn re-raises Ctrl-C / SIGTERM after it: no finally would run)
            shutil.rmtree(workdir, ignore_errors=True)

    app = FastAPI(
        title="Pneumothorax viewer",
        description="Pneumothorax segmentation of chest radiographs (SIIM-ACR bundle). Research use only.",
        lifespan=lifespan,
    )
    app.add_middleware(_BodyLimit, limit=limit + _MULTIPART_OVERHEAD, detail=_too_large(max_upload_mb))

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/api/info")
    def info() -> dict:
        """The model served and the upload bound."""
        return {
            "checkpoints": [Path(path).name for path in pipeline.checkpoints],
            "thresholds": pipeline.thresholds,
            "gate_threshold": pipeline.gate,
            "max_upload_mb": max_upload_mb,
            "worklist": results is not None,
        }

    @app.post("/api/predict")
    def predict(file: Annotated[UploadFile, File(description="one DICOM file")]) -> dict:
        """Run the model on one DICOM radiograph: its probability, mask area, RLE and links to its files."""
        number = next(uploads.numbers)
        token, folder = uploads.new()
        upload = folder / "upload.dcm"
        shown = file.filename or "the upload"
        try:
            _save_upload(file.file, upload, limit, max_upload_mb)
            result = pipeline.predict(upload, folder / "result")
        except RejectedInput as error:
            shutil.rmtree(folder, ignore_errors=True)
            logger.info(
                "request %d: rejected (%d): %s", number, error.status, str(error).replace(str(upload), "upload")
            )
            raise HTTPException(error.status, f"{shown}: {str(error).replace(str(upload), shown)}") from None
        except Exception as error:  # the server goes on serving; the reason goes to the caller and the log
            shutil.rmtree(folder, ignore_errors=True)
            reason = error_reason(error).replace(str(folder), "<upload>")
            logger.error("request %d: failed: %s", number, reason)
            raise HTTPException(500, f"{shown}: inference failed: {reason}") from None
        finally:
            upload.unlink(missing_ok=True)  # the outputs stay; the patient's file does not
        uploads.add(token, folder)
        logger.info(
            "request %d: %s: probability %s, area %d px", number, result.image_id, result.probability, result.area
        )
        return _as_json(result, f"/files/{token}", rle_link=f"/files/{token}/submission.csv")

    @app.get("/files/{token}/{path:path}", include_in_schema=False)
    def upload_file(token: str, path: str):
        folder = uploads.folder(token)
        if folder is None:
            raise HTTPException(404, "no such upload (the viewer keeps the newest uploads only)")
        return _file(folder / "result", path)

    def worklist_folder() -> Path:
        if results is None:
            raise HTTPException(404, "no worklist: start the viewer with --results DIR (an inference output folder)")
        return results

    @app.get("/api/worklist")
    def worklist() -> dict:
        """The ``--results`` folder's images, most probable first."""
        folder = worklist_folder()
        try:
            images = read_result_folder(folder)
        except (OSError, ValueError) as error:
            raise HTTPException(503, f"the results folder cannot be read: {error_reason(error)}") from None
        return {
            "folder": folder.name,
            "images": [_as_json(image, "/results", f"/rows/{image.name}.csv") for image in images],
        }

    @app.get("/results/{path:path}", include_in_schema=False)
    def results_file(path: str):
        return _file(worklist_folder(), path)

    @app.get("/rows/{name}.csv", include_in_schema=False)
    def rle_row(name: str):
        """One worklist image's row of ``submission.csv``, as the competition CSV."""
        found = [image for image in read_result_folder(worklist_folder()) if image.name == name]
        if not found:
            raise HTTPException(404, f"no image {name} in the worklist")
        row = workdir / "rows" / f"{name}.csv"
        write_rle_csv(row, [(found[0].image_id, found[0].rle)], style="stage2")
        return FileResponse(row, media_type="text/csv")

    def _file(root: Path, relative: str):
        """A file of an output folder: only result files (``RESULT_NAMES``), never outside it."""
        root = root.resolve()
        path = (root / relative).resolve()
        inside = path.is_relative_to(root) and path != root
        if not inside or path.relative_to(root).parts[0] not in RESULT_NAMES or not path.is_file():
            raise HTTPException(404, f"no such file: {relative}")
        return FileResponse(path, media_type=_MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    return app


class _BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413 and ``{"detail": detail}``: at once when its
    Content-Length says so, else as soon as that much has arrived (a chunked upload), before the rest is read.

    (FastAPI's own ``max_body_size`` answers a plain-text "Content Too Large" that names no limit.)
    """

    def __init__(self, app, limit: int, detail: str) -> None:
        self.app, self.limit, self.detail = app, limit, detail

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            return await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
        await self.app(scope, _LimitedReceive(receive, self.limit, self.detail), send)


class _LimitedReceive:
    """An ASGI ``receive`` that raises 413 once more than ``limit`` body bytes have arrived."""

    def __init__(self, receive, limit: int, detail: str) -> None:
        self.receive, self.limit, self.detail, self.received = receive, limit, detail, 0

    async def __call__(self):
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
        if self.received > self.limit:  # FastAPI passes an HTTPException from the body through to the response
            raise HTTPException(413, self.detail)
        return message


def _save_upload(source, path: Path, limit: int, max_upload_mb: float) -> None:
    """Copy an uploaded file to ``path`` (atomically), refusing it once it passes ``limit`` bytes."""
    written = 0
    with atomic_open(path, "wb") as handle:
        while chunk := source.read(MIB):
            written += len(chunk)
            if written > limit:
                raise RejectedInput(413, _too_large(max_upload_mb))
            handle.write(chunk)


def _too_large(max_upload_mb: float) -> str:
    return f"the upload is larger than {max_upload_mb:g} MB (the viewer's --max_upload_mb)"


def _as_json(result: ImageResult, base: str, rle_link: str) -> dict:
    """The API's object for one image: ``base`` is the URL its files are under."""
    links = {kind: f"{base}/{result.files[kind]}" if kind in result.files else None for kind in FILE_KINDS}
    return {
        "image_id": result.image_id,
        "probability": result.probability,
        "area": result.area,
        "positive": result.area > 0,
        "rle": result.rle,
        "links": {**links, "rle": rle_link},
        "problems": list(result.problems),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.serving.viewer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_dir", required=True, help="folder of model.pt (and its model.json, thresholds.json)")
    parser.add_argument("--results", default=None, help="an inference output folder to show as a worklist")
    parser.add_argument("--override", action="append", default=[], help="config override file (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max_upload_mb", type=float, default=100, help="largest upload accepted, in MiB")
    parser.add_argument("--workdir", default=None, help="where uploads' outputs go (default: a temporary folder)")
    parser.add_argument("--keep", type=int, default=200, help="how many uploads' outputs are kept")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    if args.results is not None:
        read_result_folder(args.results)  # a wrong folder is an error now, not on the first page view
    pipeline = ViewerPipeline(args.ckpt_dir, args.override)
    app = create_app(pipeline, args.results, args.workdir, args.max_upload_mb, args.keep)
    print(f"viewer on http://{args.host}:{args.port} (API docs at /docs); Ctrl-C stops it", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())

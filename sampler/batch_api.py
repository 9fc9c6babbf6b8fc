"""``/v1/files`` and ``/v1/batches``: OpenAI's Batch API, served (``sampler serve``).

Upload a JSONL file with ``purpose=batch``, create a batch on it with
``endpoint="/v1/completions"`` (or ``"/v1/chat/completions"``: every line must name the
batch's endpoint), poll it, download ``output_file_id`` and ``error_file_id``; cancel it.
The official SDK's ``client.files`` and ``client.batches`` work unchanged. State lives in a
:class:`~sampler.batch_store.Store`; the work is done by a
:class:`~sampler.batch_runner.Runner`, in the background of interactive requests.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HTTPRequest
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from .batch_file import URLS
from .batch_runner import Runner
from .batch_store import DONE, Store
from .web import JSON, error_response, read_json, route

__all__ = ["batch_routes"]

PURPOSES = ("batch",)  # what may be uploaded [decided: files here feed batches only]
WINDOWS = ("24h",)


class _TooLarge(Exception):
    pass


def _missing(kind: str, ident: str, param: str) -> Response:
    return error_response(404, f"No such {kind}: '{ident[:80]}'", param=param)


def _limit(request: HTTPRequest, default: int, most: int) -> int | Response:
    text = request.query_params.get("limit")
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        return error_response(
            400, f"limit must be an integer from 1 to {most}, got {text[:40]!r}.", param="limit"
        )
    return value


def _page(data: list[dict], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


def batch_routes(
    store: Store,
    runner: Runner,
    guard: Callable[[HTTPRequest], Response | None],
    *,
    max_upload_bytes: int,
) -> list[Route]:
    """The routes, each behind ``guard`` (the server's API-key check)."""

    def guarded(handler: Callable) -> Callable:
        async def run(request: HTTPRequest) -> Response:
            return guard(request) or await handler(request)

        return route(run)

    async def upload(request: HTTPRequest) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_upload_bytes + 65536:
            return _too_large(max_upload_bytes)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error_response(
                400, "Upload the file as multipart/form-data, with fields 'file' and 'purpose'."
            )
        seen = 0
        receive = request.receive

        async def counted() -> Any:  # stop reading an upload that runs past the limit
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > max_upload_bytes + 65536:
                raise _TooLarge
            return message

        try:
            form = await HTTPRequest(request.scope, counted).form(max_files=1, max_fields=8)
        except _TooLarge:
            return _too_large(max_upload_bytes)
        except HTTPException as exc:  # a malformed multipart body
            return error_response(400, f"The upload is not valid multipart: {exc.detail}")
        except ClientDisconnect:
            return Response(status_code=499)
        try:
            purpose, file = form.get("purpose"), form.get("file")
            if not isinstance(purpose, str) or purpose not in PURPOSES:
                return error_response(
                    400,
                    "purpose must be 'batch' (files here feed batches), "
                    f"got {str(purpose)[:40]!r}.",
                    param="purpose",
                )
            if file is None or isinstance(file, str):
                return error_response(400, "The form has no 'file' part.", param="file")
            if (file.size or 0) > max_upload_bytes:
                return _too_large(max_upload_bytes)
            fd, tmp = tempfile.mkstemp(dir=store.files_dir, prefix=".upload-")
            try:
                with os.fdopen(fd, "wb") as out:
                    while chunk := await file.read(1 << 20):
                        await asyncio.to_thread(out.write, chunk)  # not on the event loop
                obj = store.add_file(Path(tmp), (file.filename or "upload.jsonl")[:256], purpose)
            finally:
                Path(tmp).unlink(missing_ok=True)  # (moved away when it succeeded)
        finally:
            await form.close()
        return JSON(obj)

    async def list_files(request: HTTPRequest) -> Response:
        limit = _limit(request, 10000, 10000)
        if isinstance(limit, Response):
            return limit
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            return error_response(400, "order must be 'asc' or 'desc'.", param="order")
        data, more = store.list_files(
            purpose=request.query_params.get("purpose"),
            limit=limit,
            after=request.query_params.get("after"),
            ascending=order == "asc",
        )
        return JSON(_page(data, more))

    async def get_file(request: HTTPRequest) -> Response:
        fid = request.path_params["file_id"]
        obj = store.get_file(fid)
        return JSON(obj) if obj else _missing("file", fid, "file_id")

    async def file_content(request: HTTPRequest) -> Response:
        fid = request.path_params["file_id"]
        if store.get_file(fid) is None:
            return _missing("file", fid, "file_id")
        return FileResponse(store.file_path(fid), media_type="application/octet-stream")

    async def delete_file(request: HTTPRequest) -> Response:
        fid = request.path_params["file_id"]
        if store.get_file(fid) is None:
            return _missing("file", fid, "file_id")
        user = store.uses(fid)
        if user is not None:
            return error_response(
                409,
                f"File {fid} is the input of batch {user}, which has not ended; "
                "cancel the batch or wait for it to end first.",
                param="file_id",
                code="file_in_use",
            )
        store.delete_file(fid)
        return JSON({"id": fid, "object": "file", "deleted": True})

    async def create_batch(request: HTTPRequest) -> Response:
        body = await read_json(request, 1 << 20)
        if isinstance(body, Response):
            return body
        if not isinstance(body, dict):
            return error_response(400, "The body must be a JSON object.")
        fid, endpoint = body.get("input_file_id"), body.get("endpoint")
        window, metadata = body.get("completion_window"), body.get("metadata")
        if not isinstance(fid, str):
            return error_response(
                400, "input_file_id is required (a file id).", param="input_file_id"
            )
        if endpoint not in URLS:
            return error_response(
                400,
                f"endpoint must be {URLS[0]!r} or {URLS[1]!r}, got {str(endpoint)[:60]!r}.",
                param="endpoint",
            )
        if window not in WINDOWS:
            return error_response(
                400,
                f"completion_window must be '24h', got {str(window)[:40]!r}.",
                param="completion_window",
            )
        if metadata is not None and not _metadata_ok(metadata):
            return error_response(
                400,
                "metadata must be an object of at most 16 string values, keys of at most 64 "
                "characters and values of at most 512.",
                param="metadata",
            )
        info = store.get_file(fid)
        if info is None:
            return _missing("file", fid, "input_file_id")
        if info["purpose"] != "batch":
            return error_response(
                400,
                f"File {fid} has purpose {info['purpose']!r}, not 'batch'.",
                param="input_file_id",
            )
        batch = store.add_batch(fid, endpoint, window, metadata)
        runner.wake()
        return JSON(batch)

    async def get_batch(request: HTTPRequest) -> Response:
        bid = request.path_params["batch_id"]
        batch = store.get_batch(bid)
        return JSON(batch) if batch else _missing("batch", bid, "batch_id")

    async def list_batches(request: HTTPRequest) -> Response:
        limit = _limit(request, 20, 100)
        if isinstance(limit, Response):
            return limit
        data, more = store.list_batches(limit=limit, after=request.query_params.get("after"))
        return JSON(_page(data, more))

    async def cancel_batch(request: HTTPRequest) -> Response:
        bid = request.path_params["batch_id"]
        batch = store.get_batch(bid)
        if batch is None:
            return _missing("batch", bid, "batch_id")
        if batch["status"] in (*DONE, "finalizing"):
            return error_response(
                409,
                f"Batch {bid} has already ended ({batch['status']}): it cannot be cancelled.",
                code="batch_not_cancellable",
            )
        if batch["status"] != "cancelling":
            changed = store.update_batch(
                bid, expect=("validating", "in_progress"), status="cancelling"
            )
            if changed is None:  # it ended (or began finalizing) meanwhile
                now = (store.get_batch(bid) or batch)["status"]
                return error_response(
                    409,
                    f"Batch {bid} is {now}: it can no longer be cancelled.",
                    code="batch_not_cancellable",
                )
            batch = changed
            runner.wake()
        return JSON(batch)

    return [
        Route("/v1/files", guarded(upload), methods=["POST"]),
        Route("/v1/files", guarded(list_files), methods=["GET"]),
        Route("/v1/files/{file_id}", guarded(get_file), methods=["GET"]),
        Route("/v1/files/{file_id}", guarded(delete_file), methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", guarded(file_content), methods=["GET"]),
        Route("/v1/batches", guarded(create_batch), methods=["POST"]),
        Route("/v1/batches", guarded(list_batches), methods=["GET"]),
        Route("/v1/batches/{batch_id}", guarded(get_batch), methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", guarded(cancel_batch), methods=["POST"]),
    ]


def _too_large(limit: int) -> Response:
    return error_response(
        413,
        f"The file is larger than this server accepts ({limit} bytes; "
        "sampler serve --max-upload-mb raises it).",
        param="file",
        code="file_too_large",
    )


def _metadata_ok(metadata: Any) -> bool:
    return (
        isinstance(metadata, dict)
        and len(metadata) <= 16
        and all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
            for k, v in metadata.items()
        )
    )

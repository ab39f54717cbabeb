"""OpenAI's files and batches endpoints, so the Batch API flow is tested end to end over HTTP.

    POST /v1/files                    multipart upload (purpose=batch), JSONL of requests
    GET  /v1/files?purpose=&limit=&after=&order=   the files, newest first by default (OpenAI's list)
    DELETE /v1/files/{id}             the file removed (a batch made from it keeps its lines)
    GET  /v1/files/{id}/content       a file's bytes (inputs, outputs, errors)
    POST /v1/batches                  {input_file_id, endpoint, completion_window, metadata}
    GET  /v1/batches?limit=&after=    the batches, newest first, in OpenAI's list shape
    GET  /v1/batches/{id}             status; finished batches carry output/error file ids
    POST /v1/batches/{id}/cancel      cancelled at once; unprocessed lines go to the error file

A batch completes ``completion_s`` after creation (checked when it is read). Each line is
answered exactly as ``POST /v1/chat/completions`` would answer its body (same plan, usage and
model faults: a model configured with ``status`` fails its lines), with ``usage.cost`` halved
as batch pricing. ``line_fail_rate`` answers that fraction of lines (by hash of the custom id
and batch number) with a 500; ``expire`` ends the batch ``expired`` with only its first half
answered, the rest in the error file with code ``batch_expired``; ``affect_batches: N`` limits
both to the first N batches, so a resubmission can succeed. ``create_fail: N`` answers the
first N creates 503 (a provider hiccup between upload and batch), after waiting until the
client is gone with ``create_stall`` (a process killed while creating); ``answered_at`` is the Unix
time the answers (``created``) and the batch's end carry, for prices that vary with the hour.
Settings come from
``MockConfig.batch`` and per batch from the ``x-mock-batch`` header of the create call
(``completion_s=0.2; line_fail_rate=0.3; expire``).
"""

from __future__ import annotations

import asyncio
import json
import time
from email.parser import BytesParser
from email.policy import HTTP
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from thrifty import fastjson
from thrifty.errors import InvalidRequestError, NotFoundError, ThriftyError
from thrifty.jsonl import text_lines
from thrifty.mock import digest, wire
from thrifty.mock.behaviour import BatchSettings
from thrifty.mock.completion import build_plan, validate
from thrifty.mock.usage import build_usage

if TYPE_CHECKING:
    from thrifty.mock.app import MockUpstream

BATCH_HEADER = "x-mock-batch"
ENDPOINT = "/v1/chat/completions"


def _json_response(body: Any, status: int = 200) -> Response:
    return Response(fastjson.dumps(body), status_code=status, media_type="application/json")


def _error(exc: ThriftyError) -> Response:
    return _json_response(exc.to_openai(), exc.status)


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (filename, bytes)`` of a multipart/form-data body (stdlib only)."""
    if "multipart/form-data" not in content_type:
        raise InvalidRequestError("expected a multipart/form-data upload")
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


def parse_settings(value: str, base: BatchSettings) -> BatchSettings:
    fields: dict[str, Any] = {}
    for item in value.split(";"):
        name, sep, raw = item.strip().partition("=")
        name = name.strip().lower().replace("-", "_")
        if not name:
            continue
        if name not in BatchSettings.model_fields:
            raise InvalidRequestError(f"{BATCH_HEADER}: unknown key {name!r}", param=BATCH_HEADER)
        fields[name] = raw.strip() if sep else True
    try:
        override = BatchSettings.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequestError(f"{BATCH_HEADER}: {exc.errors()[0]['msg']}", param=BATCH_HEADER) from None
    return base.model_copy(update={k: getattr(override, k) for k in override.model_fields_set})


class BatchAPI:
    """Files and batches held in memory by one mock server."""

    def __init__(self, mock: MockUpstream) -> None:
        self.mock = mock
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._settings: dict[str, tuple[BatchSettings, int]] = {}
        self._inputs: dict[str, bytes] = {}  # each batch's input lines, kept if its file is deleted
        self._file_count = 0
        self._started: dict[str, float] = {}
        self.created = 0  # batches created (tests assert a restart did not resubmit)
        self.uploads = 0
        self.create_calls = 0  # creates asked for, refused ones (create_fail) included
        self.lists = 0  # pages of the batch list served (a run that searched for a batch)
        self.file_lists = 0  # pages of the file list served
        self.deleted: list[str] = []  # ids of the files deleted, in order
        # "asc" or "desc": the file list's order whatever ``order`` asks (an OpenAI-compatible
        # provider that ignores the parameter); None obeys it.
        self.file_order: str | None = None

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self.upload, methods=["POST"]),
            Route("/v1/files", self.list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", self.file_info, methods=["GET"]),
            Route("/v1/files/{file_id}", self.delete_file, methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", self.file_content, methods=["GET"]),
            Route("/v1/batches", self.create, methods=["POST"]),
            Route("/v1/batches", self.list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self.get, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self.cancel, methods=["POST"]),
        ]

    def _new_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        self._file_count += 1  # not len(files): a deleted file's id is never given again
        file_id = f"file-{self.mock._id_prefix}{self._file_count:06x}"
        info = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose}
        self.files[file_id] = {"info": info, "data": data}
        return info

    async def upload(self, request: Request) -> Response:
        raw = await request.body()
        self.mock.recorder.add(request.method, request.scope["path"], request.scope["headers"], {"bytes": len(raw)})
        try:
            self._auth(request)
            form = parse_multipart(request.headers.get("content-type", ""), raw)
            if "file" not in form:
                raise InvalidRequestError("missing 'file' field", param="file")
            purpose = form.get("purpose", (None, b"batch"))[1].decode() or "batch"
        except ThriftyError as exc:
            return _error(exc)
        self.uploads += 1
        filename, data = form["file"]
        return _json_response(self._new_file(data, filename or "upload.jsonl", purpose))

    async def file_info(self, request: Request) -> Response:
        found = self.files.get(request.path_params["file_id"])
        if found is None:
            return _error(NotFoundError("No such file.", code="not_found"))
        return _json_response(found["info"])

    async def list_files(self, request: Request) -> Response:
        """OpenAI's file list: ``purpose`` filters, ``limit`` (1-10000, default 10000), ``order``
        (``desc``, the default, newest first), from after the ``after`` id."""
        query = request.query_params
        self.mock.recorder.add(request.method, request.scope["path"], request.scope["headers"], dict(query))
        try:
            self._auth(request)
            raw = query.get("limit", "10000")
            if not raw.isdigit() or not 1 <= int(raw) <= 10000:
                raise InvalidRequestError("limit must be an integer between 1 and 10000", param="limit")
            order = query.get("order", "desc")
            if order not in ("asc", "desc"):
                raise InvalidRequestError("order must be 'asc' or 'desc'", param="order")
            purpose = query.get("purpose")
            ids = [i for i, f in self.files.items() if purpose is None or f["info"]["purpose"] == purpose]
            ids = ids[::-1] if (self.file_order or order) == "desc" else ids
            after = query.get("after")
            if after is not None and after not in ids:
                raise InvalidRequestError("after: no such file", param="after")
        except ThriftyError as exc:
            return _error(exc)
        self.file_lists += 1
        start = ids.index(after) + 1 if after is not None else 0
        page = ids[start:start + int(raw)]
        return _json_response({"object": "list", "data": [self.files[i]["info"] for i in page],
                               "first_id": page[0] if page else None, "last_id": page[-1] if page else None,
                               "has_more": start + len(page) < len(ids)})

    async def delete_file(self, request: Request) -> Response:
        self.mock.recorder.add(request.method, request.scope["path"], request.scope["headers"], {})
        try:
            self._auth(request)
        except ThriftyError as exc:
            return _error(exc)
        file_id = request.path_params["file_id"]
        if self.files.pop(file_id, None) is None:
            return _error(NotFoundError("No such file.", code="not_found"))
        self.deleted.append(file_id)
        return _json_response({"id": file_id, "object": "file", "deleted": True})

    async def file_content(self, request: Request) -> Response:
        found = self.files.get(request.path_params["file_id"])
        if found is None:
            return _error(NotFoundError("No such file.", code="not_found"))
        return Response(found["data"], media_type="application/octet-stream")

    async def create(self, request: Request) -> Response:
        try:
            self._auth(request)
            body = fastjson.loads(await request.body())
            self.mock.recorder.add(request.method, request.scope["path"], request.scope["headers"], body)
            file_id = body.get("input_file_id") if isinstance(body, dict) else None
            if file_id not in self.files:
                raise InvalidRequestError("input_file_id: no such file", param="input_file_id")
            if body.get("endpoint") != ENDPOINT:
                raise InvalidRequestError(f"endpoint must be {ENDPOINT}", param="endpoint")
            settings = self.mock.config.batch
            header = request.headers.get(BATCH_HEADER)
            if header:
                settings = parse_settings(header, settings)
        except ValueError:
            return _error(InvalidRequestError("We could not parse the JSON body of your request."))
        except ThriftyError as exc:
            return _error(exc)
        self.create_calls += 1
        if self.create_calls <= settings.create_fail:
            deadline = time.monotonic() + 30
            while settings.create_stall and time.monotonic() < deadline and not await request.is_disconnected():
                await asyncio.sleep(0.05)
            return _json_response(wire.error_body(503, "The batch service is temporarily unavailable."), 503)
        self.created += 1
        now = int(time.time())
        batch_id = f"batch_{self.mock._id_prefix}{self.created:06x}"
        lines = text_lines(self.files[file_id]["data"].decode("utf-8", "replace"))
        batch = {
            "id": batch_id, "object": "batch", "endpoint": ENDPOINT, "errors": None,
            "input_file_id": file_id, "completion_window": body.get("completion_window", "24h"),
            "status": "in_progress", "output_file_id": None, "error_file_id": None,
            "created_at": now, "in_progress_at": now, "expires_at": now + 86400, "finalizing_at": None,
            "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
            "cancelled_at": None, "request_counts": {"total": len([x for x in lines if x.strip()]),
                                                     "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        self.batches[batch_id] = batch
        self._settings[batch_id] = (settings, self.created)
        self._started[batch_id] = time.monotonic()
        self._inputs[batch_id] = self.files[file_id]["data"]
        return _json_response(batch)

    async def get(self, request: Request) -> Response:
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _error(NotFoundError("No such batch.", code="not_found"))
        return _json_response(self._current(batch))

    async def list_batches(self, request: Request) -> Response:
        """OpenAI's list: newest first, ``limit`` (1-100, default 20) from after the ``after`` id."""
        query = request.query_params
        self.mock.recorder.add(request.method, request.scope["path"], request.scope["headers"], dict(query))
        try:
            self._auth(request)
            raw = query.get("limit", "20")
            if not raw.isdigit() or not 1 <= int(raw) <= 100:
                raise InvalidRequestError("limit must be an integer between 1 and 100", param="limit")
            newest = list(reversed(self.batches))
            after = query.get("after")
            if after is not None and after not in self.batches:
                raise InvalidRequestError("after: no such batch", param="after")
        except ThriftyError as exc:
            return _error(exc)
        self.lists += 1
        start = newest.index(after) + 1 if after is not None else 0
        ids = newest[start:start + int(raw)]
        data = [self._current(self.batches[i]) for i in ids]
        return _json_response({"object": "list", "data": data, "first_id": ids[0] if ids else None,
                               "last_id": ids[-1] if ids else None, "has_more": start + len(ids) < len(newest)})

    def _current(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` as it is now: one past its ``completion_s`` is finished when first read."""
        if batch["status"] == "in_progress":
            settings, _ = self._settings[batch["id"]]
            if time.monotonic() - self._started[batch["id"]] >= settings.completion_s:
                self._finish(batch)
        return batch

    async def cancel(self, request: Request) -> Response:
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _error(NotFoundError("No such batch.", code="not_found"))
        if batch["status"] == "in_progress":
            now = int(time.time())
            errors = [self._line_error(line, "batch_cancelled", "The batch was cancelled.")
                      for line in self._lines(batch)]
            batch.update(status="cancelled", cancelling_at=now, cancelled_at=now)
            batch["request_counts"]["failed"] = len(errors)
            batch["error_file_id"] = self._write(errors, batch["id"], "errors") if errors else None
        return _json_response(batch)

    def _auth(self, request: Request) -> None:
        if self.mock._auth is not None and request.headers.get("authorization") != self.mock._auth:
            from thrifty.errors import AuthenticationError

            raise AuthenticationError("Incorrect API key provided.")

    def _lines(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for text in text_lines(self._inputs[batch["id"]].decode("utf-8", "replace")):
            if text.strip():
                out.append(json.loads(text))
        return out

    def _write(self, rows: list[dict[str, Any]], batch_id: str, kind: str) -> str:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
        return str(self._new_file(data, f"{batch_id}_{kind}.jsonl", "batch_output")["id"])

    @staticmethod
    def _line_error(line: dict[str, Any], code: str, message: str) -> dict[str, Any]:
        return {"id": f"batch_req_{digest.sub_key(b'e', str(line.get('custom_id'))).hex()[:16]}",
                "custom_id": line.get("custom_id"), "response": None, "error": {"code": code, "message": message}}

    def _finish(self, batch: dict[str, Any]) -> None:
        settings, number = self._settings[batch["id"]]
        affected = settings.affect_batches is None or number <= settings.affect_batches
        now = int(settings.answered_at or time.time())
        try:
            lines = self._lines(batch)
        except ValueError:
            batch.update(status="failed", failed_at=now, errors={"object": "list", "data": [
                {"code": "invalid_json_line", "message": "A line of the input file is not valid JSON.", "line": None}]})
            return
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        cutoff = len(lines) // 2 if (settings.expire and affected) else len(lines)
        for i, line in enumerate(lines):
            if i >= cutoff:
                errors.append(self._line_error(line, "batch_expired", "This request could not be executed before the completion window expired."))
                continue
            fail = affected and settings.line_fail_rate > 0 and digest.unit(
                digest.sub_key(b"batch", number), f"fail{line.get('custom_id')}") < settings.line_fail_rate
            row = self._answer(line, fail, now)
            (outputs if row["response"] and row["response"]["status_code"] == 200 else errors).append(row)
        batch["request_counts"].update(completed=len(outputs), failed=len(errors))
        batch["output_file_id"] = self._write(outputs, batch["id"], "output") if outputs else None
        batch["error_file_id"] = self._write(errors, batch["id"], "errors") if errors else None
        if cutoff < len(lines):
            batch.update(status="expired", expired_at=now)
        else:
            batch.update(status="completed", finalizing_at=now, completed_at=now)

    def _answer(self, line: dict[str, Any], fail: bool, now: int) -> dict[str, Any]:
        row_id = f"batch_req_{digest.sub_key(b'r', str(line.get('custom_id'))).hex()[:16]}"
        base = {"id": row_id, "custom_id": line.get("custom_id"), "error": None}
        body = line.get("body")
        try:
            model, _ = validate(body)
        except ThriftyError as exc:
            return {**base, "response": {"status_code": exc.status, "request_id": row_id, "body": exc.to_openai()}}
        behaviour = self.mock.behaviours.get(model)
        status = 500 if fail else behaviour.faults.status
        if status is not None:
            return {**base, "response": {"status_code": status, "request_id": row_id,
                                         "body": wire.error_body(status, behaviour.faults.error_message)}}
        assert isinstance(body, dict)  # validate() accepted it
        plan = build_plan(self.mock.config.seed, body, model, behaviour)
        usage = build_usage(behaviour, plan.prompt_tokens, plan.completion_tokens, plan.reasoning_tokens, 0)
        if "cost" in usage:
            usage["cost"] = round(usage["cost"] * 0.5, 10)  # batch price: half
        completion = wire.completion(plan, f"chatcmpl-{row_id[10:]}", now, usage,
                                     behaviour.system_fingerprint)
        return {**base, "response": {"status_code": 200, "request_id": row_id, "body": completion}}

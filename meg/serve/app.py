"""The OpenAI-compatible HTTP API of `meg serve` (FastAPI), and the page at `/`.

Routes:
    POST /v1/completions        prompt(s) -> continuations          (model "<name>": edited, "<name>:base": unedited)
    POST /v1/chat/completions   messages -> the assistant's answer  (the router reads the last user message)
    GET  /v1/models, /v1/models/{id}, /health
    GET  /v1/edits?q=&offset=&limit=    the pack's edits, searchable, paginated
    POST /v1/edits              {"edits": [records], "mode": "add" | "replace"}: saved to the pack, then served
    DELETE /v1/edits/{id}       the same for a removal
    GET  /                      the comparison page (static HTML; its calls carry the API key typed into it)

Every choice carries `meg`: whether an edit was applied, which one (id, prompt, target, subject), the router's
score, the text it routed on, and the pack revision that answered (it grows by one with every live edit).

Completions show the LM the prompt through the pack's prompt template (as `meg generate` does). Chat completions
use the tokenizer's chat template when it has one; without one (the reference model) they use PLAIN CHAT: the
messages before the last user message as lines `System: ...` / `User: ...` / `Assistant: ...` and a blank line,
then the last user message through the pack's prompt template, so a chat of one user message is the completion
of its text; the last message must then be the user's.

Every error is OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with a 4xx for anything the
request got wrong (naming the field) and never a traceback: 400 bad field / body, 401 missing key, 403 edits not
allowed, 404 unknown model / edit / route, 413 body too large, 503 queue full (Retry-After), 504 timed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from meg.errors import InputError
from meg.lifelong import plan_add, resolve
from meg.prompts import encode_answers
from meg.requests import EditRequest, request_from_dict
from meg.serve.batcher import Batcher, Overloaded, TimedOut
from meg.serve.engine import Engine, Row
from meg.serve.sampling import RowSpec, row_seed
from meg.serve.schemas import ChatMessage, ChatRequest, CompletionRequest, EditChange, validation_error

log = logging.getLogger("meg")

BASE_SUFFIX = ":base"
PAGE = Path(__file__).with_name("page.html")
ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
CHAT_DEFAULT_MAX_TOKENS = 256  # without max_tokens a chat answer may use the rest of the context, up to this
EDIT_CHECK_TOKENS = 20  # meg.decoding.MAX_NEW_TOKENS: an edit's prompt must leave room to check its answer


@dataclass
class ServeSettings:
    """How the server runs (the `meg serve` options)."""

    name: str  # the model id clients send; "<name>:base" is the unedited model
    host: str = "127.0.0.1"
    api_key: str | None = None
    read_only: bool = False
    max_batch: int = 32
    gather_ms: float = 10.0
    max_queue: int = 256
    timeout_s: float = 120.0
    max_body_bytes: int = 1 << 20
    max_prompt_chars: int = 16_384
    default_max_tokens: int = 16  # OpenAI's default for completions
    max_tokens_limit: int = 4096
    retry_after_s: int = 1


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.kind, self.headers)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- ASGI middleware: the API key, and no traceback ever reaches a client or the log ---


class BearerAuth:
    """Every route but the static page needs `Authorization: Bearer <key>` when a key is set."""

    def __init__(self, app: Any, key: str | None, open_paths: frozenset[str] = frozenset({"/"})):
        self.app, self.key, self.open_paths = app, key, open_paths

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.key and scope["path"] not in self.open_paths:
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            token = given[7:].strip() if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode("utf-8", "replace"), self.key.encode()):
                what = "a wrong API key" if token else "no API key"
                await error_response(401, f"{what}: send 'Authorization: Bearer <key>' (the server's --api-key)",
                                     code="invalid_api_key")(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Guard:
    """Answer an unexpected exception with a one-line 500 in OpenAI's shape, logged as one line."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as err:  # noqa: BLE001 (the one place every other error ends)
            log.error("internal error on %s %s: %s: %s", scope.get("method"), scope.get("path"),
                      type(err).__name__, str(err)[:300])
            if os.environ.get("MEG_DEBUG"):
                log.exception("traceback (MEG_DEBUG)")
            if not started:
                await error_response(500, f"internal error: {type(err).__name__}", kind="server_error")(
                    scope, receive, send)


# --- the application ---


class Server:
    """The routes' shared state: engine, batcher, settings, and the request checks."""

    def __init__(self, engine: Engine, settings: ServeSettings):
        self.engine, self.settings = engine, settings
        self.batcher = Batcher(engine, settings.max_batch, settings.gather_ms / 1000, settings.max_queue,
                               settings.timeout_s)
        self.tokenizer = copy.deepcopy(engine.tokenizer)  # the model thread's own is never shared
        self.edits_executor: ThreadPoolExecutor | None = None
        self.created = int(time.time())

    # --- bodies ---

    async def body(self, request: Request, schema: type[BaseModel]) -> Any:
        limit = self.settings.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise APIError(413, f"the request body is {length} bytes; this server accepts at most {limit}",
                           code="request_too_large")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise APIError(413, f"the request body exceeds {limit} bytes", code="request_too_large")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise APIError(400, "the request body is empty; send a JSON object")
        try:
            data = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, RecursionError) as err:
            raise APIError(400, f"the request body is not valid JSON ({_first_line(err)})",
                           code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, f"the request body must be a JSON object, got {_json_kind(data)}")
        try:
            return schema.model_validate(data)
        except ValidationError as err:
            message, param = validation_error(err)
            raise APIError(400, message, param) from None

    # --- models ---

    @property
    def edited_available(self) -> bool:
        return self.engine.served.edited is not None

    def model_ids(self) -> list[str]:
        name = self.settings.name
        return [name, name + BASE_SUFFIX] if self.edited_available else [name]

    def use_edits(self, model: str, use_edits: bool | None) -> bool:
        if model not in self.model_ids():
            known = " and ".join(repr(m) for m in self.model_ids())
            raise APIError(404, f"model {model!r} does not exist; this server serves {known}", "model",
                           "model_not_found")
        return self.edited_available and not model.endswith(BASE_SUFFIX) and use_edits is not False

    # --- prompts ---

    def check_text(self, text: str, param: str) -> None:
        if not text.strip():
            raise APIError(400, f"'{param}' is empty; give the text to continue", param)
        if len(text) > self.settings.max_prompt_chars:
            raise APIError(400, f"'{param}' is {len(text)} characters; this server accepts at most "
                           f"{self.settings.max_prompt_chars}", param, "prompt_too_long")

    def tokens(self, text: str, special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def budget(self, ids: list[int], max_tokens: int | None, param: str, default: int,
               field: str = "max_tokens") -> int:
        """The row's token budget: `max_tokens` checked against the context, or the default that fits."""
        limit = self.engine.context
        if limit is not None and len(ids) >= limit:
            raise APIError(400, f"'{param}' is {len(ids)} tokens; the model's context is {limit} tokens, so nothing "
                           "can be generated (shorten it)", param, "context_length_exceeded")
        if max_tokens is None:
            return min(default, limit - len(ids)) if limit is not None else default
        if max_tokens > self.settings.max_tokens_limit:
            raise APIError(400, f"'{field}' is {max_tokens}; this server generates at most "
                           f"{self.settings.max_tokens_limit}", field)
        if limit is not None and len(ids) + max_tokens > limit:
            raise APIError(400, f"'{field}' {max_tokens} plus the {len(ids)} prompt tokens exceeds the model's "
                           f"context of {limit} tokens (at most {limit - len(ids)} here)", field,
                           "context_length_exceeded")
        return max_tokens

    def rows(self, prompts: list[tuple[list[int], str | None]], body: Any, budgets: list[int]) -> list[Row]:
        n = body.n or 1
        if len(prompts) * n > self.settings.max_batch:
            raise APIError(400, f"{len(prompts)} prompt(s) x n={n} is {len(prompts) * n} choices; this server "
                           f"decodes at most {self.settings.max_batch} per request", "n")
        temperature = 1.0 if body.temperature is None else body.temperature
        top_p = 1.0 if body.top_p is None else body.top_p
        out = []
        for p, ((ids, route), budget) in enumerate(zip(prompts, budgets)):
            for j in range(n):
                spec = RowSpec(tuple(ids), budget, temperature, top_p, tuple(body.stop or ()),
                               row_seed(body.seed, p * n + j))
                out.append(Row(spec, route))
        return out

    def submit(self, rows: list[Row], stream: bool):
        try:
            return self.batcher.submit(rows, stream=stream)
        except Overloaded as err:
            raise APIError(503, f"the server is busy ({err}); retry shortly", code="server_overloaded",
                           kind="server_error", headers={"Retry-After": str(self.settings.retry_after_s)}) from None

    async def results(self, job) -> list:
        try:
            return await self.batcher.result(job)
        except TimedOut as err:
            raise APIError(504, f"timed out: {err}", code="timeout", kind="server_error") from None
        except Overloaded as err:
            raise APIError(503, str(err), code="server_overloaded", kind="server_error",
                           headers={"Retry-After": str(self.settings.retry_after_s)}) from None
        except InputError as err:
            raise APIError(400, str(err)) from None

    # --- chat ---

    def render_chat(self, messages: list[ChatMessage]) -> tuple[list[int], str]:
        """(the prompt's token ids, the text the router reads: the last user message)."""
        users = [i for i, m in enumerate(messages) if m.role == "user"]
        if not users:
            raise APIError(400, "'messages' has no user message (the router reads the last one)", "messages")
        last = users[-1]
        key = messages[last].text()
        self.check_text(key, f"messages[{last}].content")
        total = sum(len(m.text()) for m in messages)
        if total > self.settings.max_prompt_chars:
            raise APIError(400, f"'messages' hold {total} characters; this server accepts at most "
                           f"{self.settings.max_prompt_chars}", "messages", "prompt_too_long")
        if getattr(self.tokenizer, "chat_template", None):
            conversation = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                            for m in messages]
            try:
                text = self.tokenizer.apply_chat_template(conversation, tokenize=False,
                                                          add_generation_prompt=messages[-1].role != "assistant")
            except Exception as err:  # noqa: BLE001 (templates raise their own errors, e.g. roles must alternate)
                raise APIError(400, f"the model's chat template refused 'messages': {_first_line(err)}",
                               "messages") from None
            return self.tokens(text, special=False), key
        if last != len(messages) - 1:
            raise APIError(400, "'messages': the model has no chat template, so the last message must be the user's",
                           "messages")
        lines = [f"{ROLES[m.role]}: {m.text()}" for m in messages[:last]]
        text = ("\n".join(lines) + "\n\n" if lines else "") + self.engine.template.format(key)
        return self.tokens(text), key


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:200]


def _json_kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _edit_param(message: str) -> str | None:
    """'edits[3]: field 'target' must be ...' -> 'edits[3].target'."""
    where = re.match(r"(edits\[\d+\])", message)
    field = re.search(r"field '(\w+)'", message)
    if where is None:
        return "edits"
    return where.group(1) + (f".{field.group(1)}" if field else "")


def create_app(engine: Engine, settings: ServeSettings) -> FastAPI:
    """The FastAPI application serving `engine` (see the module docstring)."""
    server = Server(engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await server.batcher.start()
        server.edits_executor = ThreadPoolExecutor(1, thread_name_prefix="meg-edits")
        try:
            yield
        finally:
            await server.batcher.stop()
            server.edits_executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="meg-edit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_middleware(BearerAuth, key=settings.api_key)
    app.add_middleware(Guard)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 404:
            return error_response(404, f"no route {request.method} {request.url.path}", code="not_found")
        if err.status_code == 405:
            return error_response(405, f"{request.method} is not allowed on {request.url.path}",
                                  code="method_not_allowed")
        return error_response(err.status_code, str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return error_response(400, f"invalid '{param}': {first['msg']}", param)

    # --- completions ---

    @app.post("/v1/completions")
    async def completions(request: Request):
        body: CompletionRequest = await server.body(request, CompletionRequest)
        edited = server.use_edits(body.model, body.use_edits)
        prompts, budgets = [], []
        for i, text in enumerate(body.prompt):
            param = "prompt" if len(body.prompt) == 1 else f"prompt[{i}]"
            server.check_text(text, param)
            ids = server.tokens(engine.template.format(text))
            budgets.append(server.budget(ids, body.max_tokens, param, settings.default_max_tokens))
            prompts.append((ids, text if edited else None))
        rows = server.rows(prompts, body, budgets)
        prompt_tokens = sum(len(ids) for ids, _ in prompts)
        if body.stream:
            job = server.submit(rows, stream=True)
            return _sse(server, job, "text_completion", body, prompt_tokens)
        results = await server.results(server.submit(rows, stream=False))
        choices = [{"index": i, "text": r.text, "logprobs": None, "finish_reason": _finish(r), "meg": info}
                   for i, (r, info) in enumerate(results)]
        return _response("cmpl", "text_completion", body.model, choices, prompt_tokens, results)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body: ChatRequest = await server.body(request, ChatRequest)
        edited = server.use_edits(body.model, body.use_edits)
        ids, key = server.render_chat(body.messages)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        budget = server.budget(ids, max_tokens, "messages", CHAT_DEFAULT_MAX_TOKENS, param)
        rows = server.rows([(ids, key if edited else None)], body, [budget])
        if body.stream:
            return _sse(server, server.submit(rows, stream=True), "chat.completion.chunk", body, len(ids))
        results = await server.results(server.submit(rows, stream=False))
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                    "finish_reason": _finish(r), "meg": info} for i, (r, info) in enumerate(results)]
        return _response("chatcmpl", "chat.completion", body.model, choices, len(ids), results)

    # --- models and health ---

    def _model_card(model_id: str) -> dict[str, Any]:
        pack = engine.current_pack
        edited = pack is not None and not model_id.endswith(BASE_SUFFIX)
        return {"id": model_id, "object": "model", "created": server.created, "owned_by": "meg-edit",
                "meg": {"edited": edited, "edits": len(pack) if edited else 0,
                        "base_model": pack.base_model if pack is not None else settings.name}}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(m) for m in server.model_ids()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        server.use_edits(model_id, None)
        return _model_card(model_id)

    @app.get("/health")
    async def health():
        pack = engine.current_pack
        return {"status": "ok", "model": settings.name, "edits": len(pack) if pack is not None else None,
                "pack_revision": engine.served.revision, "queued": server.batcher.queued,
                "batches": server.batcher.stats, "read_only": settings.read_only or engine.pack_path is None}

    # --- edits ---

    def _may_change() -> None:
        if engine.current_pack is None:
            raise APIError(400, "this server serves no pack (start it with --pack) so it has no edits to change",
                           code="no_pack")
        if settings.read_only or engine.pack_path is None:
            raise APIError(403, "this server is read-only (--read-only): edits cannot be changed", code="read_only")
        if not settings.api_key and not is_loopback(settings.host):
            raise APIError(403, f"the server listens on {settings.host}, not loopback: edit routes need an API "
                           "key (--api-key or MEG_API_KEY)", code="api_key_required")

    def _edit_json(edit_id: int, request: EditRequest) -> dict[str, Any]:
        return {"id": edit_id, **request.to_json()}

    @app.get("/v1/edits")
    async def list_edits(request: Request):
        pack = engine.current_pack
        if pack is None:
            raise APIError(400, "this server serves no pack (start it with --pack)", code="no_pack")
        query = request.query_params
        offset = _query_int(query, "offset", 0, 0)
        limit = _query_int(query, "limit", 50, 1, 1000)
        unknown = sorted(set(query) - {"offset", "limit", "q"})
        if unknown:
            raise APIError(400, f"unknown query parameter '{unknown[0]}' (use q, offset, limit)", unknown[0])
        search = query.get("q", "").strip().lower()
        matches = [(i, r) for i, r in zip(pack.ids, pack.requests)
                   if not search or any(search in (t or "").lower() for t in (r.prompt, r.target, r.subject))]
        page = matches[offset:offset + limit]
        return {"object": "list", "data": [_edit_json(i, r) for i, r in page], "total": len(matches),
                "offset": offset, "limit": limit, "has_more": offset + limit < len(matches),
                "edits": len(pack), "pack_revision": engine.served.revision}

    @app.post("/v1/edits")
    async def change_edits(request: Request):
        _may_change()
        body: EditChange = await server.body(request, EditChange)
        try:
            requests = [request_from_dict(data, f"edits[{i}]") for i, data in enumerate(body.edits)]
            _check_edits_fit(server, requests)
            pack = engine.current_pack
            plan_add(pack.requests, pack.ids, pack.next_id, requests, body.mode)  # a bad replace fails now
        except InputError as err:
            raise _edit_error(err) from None
        return await _change(server, body.mode, requests=requests)

    @app.delete("/v1/edits/{edit_id}")
    async def delete_edit(edit_id: str):
        _may_change()
        if not re.fullmatch(r"\d{1,18}", edit_id):
            raise APIError(400, f"an edit id is a non-negative integer, got {edit_id!r}", "id")
        pack = engine.current_pack
        try:
            resolve(pack.requests, pack.ids, [int(edit_id)])
        except InputError:
            raise APIError(404, f"no edit with id {edit_id} in the pack", "id", "edit_not_found") from None
        return await _change(server, "remove", keys=[int(edit_id)])

    # --- the page ---

    page = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    return app


def _query_int(query: Any, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"\d{1,9}", raw.strip()):
        raise APIError(400, f"query parameter '{name}' must be an integer >= {minimum}, got {raw!r}", name)
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise APIError(400, f"query parameter '{name}' must be {bound}, got {value}", name)
    return value


def _check_edits_fit(server: Server, requests: list[EditRequest]) -> None:
    """Each edit's templated prompt leaves room for the answer check, and prompt + target fit the context."""
    limit = server.engine.context
    if limit is None:
        return
    template = server.engine.template
    texts = [template.format(r.prompt) for r in requests]
    names = [f"edits[{i}]" for i in range(len(requests))]
    for name, text in zip(names, texts):
        count = len(server.tokens(text))
        if count + EDIT_CHECK_TOKENS > limit:
            raise InputError(f"{name}: field 'prompt' is {count} tokens; with {EDIT_CHECK_TOKENS} generated tokens it "
                             f"exceeds the model's context of {limit} tokens (shorten the prompt)")
    encode_answers(server.tokenizer, texts, [r.target for r in requests], max_length=limit, names=names)


async def _change(server: Server, operation: str, requests: list[EditRequest] = (), keys: list = ()) -> dict:
    loop = asyncio.get_running_loop()
    try:
        summary = await loop.run_in_executor(server.edits_executor, server.engine.change, operation, requests, keys)
    except InputError as err:
        raise _edit_error(err) from None
    return {"object": "edit_operation", **summary}


def _edit_error(err: InputError) -> APIError:
    message = str(err)
    return APIError(400, message if message.startswith("edits") else f"'edits': {message}", _edit_param(message))


def _finish(result: Any) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def _usage(prompt_tokens: int, results: list) -> dict[str, int]:
    completion = sum(r.tokens for r, _ in results)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def _response(prefix: str, kind: str, model: str, choices: list, prompt_tokens: int, results: list) -> dict:
    return {"id": f"{prefix}-{secrets.token_hex(12)}", "object": kind, "created": int(time.time()), "model": model,
            "choices": choices, "usage": _usage(prompt_tokens, results)}


def _sse(server: Server, job: Any, kind: str, body: Any, prompt_tokens: int) -> StreamingResponse:
    """Server-sent events: a chunk per piece of text, the last of each choice with its finish_reason and `meg`."""
    chat = kind == "chat.completion.chunk"
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}"
    created = int(time.time())
    include_usage = bool((body.stream_options or {}).get("include_usage"))

    def chunk(index: int, text: str | None, finish: str | None = None, info: dict | None = None,
              first: bool = False) -> str:
        if chat:
            delta = ({"role": "assistant", "content": ""} if first else {}) | ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        if info is not None:
            choice["meg"] = info
        data = {"id": ident, "object": kind, "created": created, "model": body.model, "choices": [choice]}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    async def events():
        try:
            async for event in server.batcher.events(job):
                if event[0] == "route":
                    yield chunk(event[1], None, info=event[2], first=True)
                elif event[0] == "text":
                    yield chunk(event[1], event[2])
                elif event[0] == "done":
                    results = event[1]
                    for i, (result, info) in enumerate(results):
                        yield chunk(i, None, _finish(result), info)
                    if include_usage:
                        data = {"id": ident, "object": kind, "created": created, "model": body.model, "choices": [],
                                "usage": _usage(prompt_tokens, results)}
                        yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"
        except TimedOut as err:
            yield _sse_error(f"timed out: {err}", "timeout")
        except Exception as err:  # noqa: BLE001 (the stream has started: the error goes in it, one line)
            log.error("stream failed: %s: %s", type(err).__name__, _first_line(err))
            yield _sse_error(f"internal error: {type(err).__name__}", "internal_error")

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse_error(message: str, code: str) -> str:
    error = {"message": message, "type": "server_error", "param": None, "code": code}
    return f"data: {json.dumps({'error': error})}\n\n"


def serve(engine: Engine, settings: ServeSettings, port: int, log_level: str = "warning") -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    config = uvicorn.Config(create_app(engine, settings), host=settings.host, port=port, log_level=log_level,
                            access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()

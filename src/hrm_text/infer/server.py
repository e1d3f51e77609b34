"""OpenAI-compatible HTTP server: `/v1/completions`, `/v1/chat/completions`, `/v1/models`, `/health`.

Architecture. One `Engine` runs in ONE background thread (`EngineWorker`), inside
`Engine.run(..., poll)`: every decode step it polls a thread-safe queue for newly arrived requests
and admits them into free batch rows (continuous batching), so requests from many HTTP clients
share the same batched decode steps. Each request carries a handle holding its asyncio event loop;
the engine thread posts tokens and the final result back with `loop.call_soon_threadsafe`, so the
event loop never blocks on the model and the model never waits for the network.

Why validate everything before the engine sees it: a request that made `Engine.run` raise would
end the loop for every client. Bad requests are answered 4xx with an OpenAI-style error body
(`{"error": {"message", "type", "param", "code"}}`) and never reach the engine; if the engine
still fails, the in-flight requests get a 500 and the loop restarts, so the server keeps serving.

Prompts. `/v1/completions`' `prompt` is the instruction text: the server builds
`<boq> <condition tags> prompt <eoq>` (the layout the model was trained on); `/v1/chat/completions`
folds the messages into one instruction (`hrm_text.infer.chat.fold_messages`). The extra request
field `condition` ("direct" by default, e.g. "cot" or "synth,cot") selects the condition tags.

Cancellation: when a streaming client goes away, its request's `max_tokens` is lowered so the
engine finishes that row at the next token instead of generating for nobody.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import torch
from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hrm_text.config import InferConfig
from hrm_text.data.records import parse_condition
from hrm_text.data.tokenizer import TextTokenizer
from hrm_text.infer.chat import StreamDecoder, decode_fn, fold_messages
from hrm_text.infer.engine import Engine, Request, Result, SamplingParams
from hrm_text.checkpoint.loading import LoadedModel
from hrm_text.infer.textgen import make_engine

log = logging.getLogger(__name__)

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
DEFAULT_CHAT_TOKENS = 256
MAX_STOP_STRINGS = 4
MAX_PROMPTS = 64
# a stable id every server answers to besides its own name, so client code written as
# `model="hrm-text"` works whatever checkpoint folder is served
DEFAULT_MODEL_ALIAS = "hrm-text"


class APIError(Exception):
    """A request error answered as OpenAI-style JSON with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.type)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   type_: str = "invalid_request_error") -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


# ------------------------------------------------------------------------------------ engine thread
@dataclass
class _Handle:
    """Where the engine thread sends one request's tokens and result."""

    loop: asyncio.AbstractEventLoop
    on_token: Callable[[int], None] | None
    on_done: Callable[[Result | BaseException], None]
    request: Request | None = None


class EngineWorker:
    """Owns the engine and its thread; `submit` is called from the event loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.Queue[Request] = queue.Queue()
        self._handles: dict[int, _Handle] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.restarts = 0
        self.served = 0

    # ---- lifecycle
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._main, name="hrm-text-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._fail_all(RuntimeError("server shutting down"))

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._handles)

    # ---- requests
    def submit(self, prompt_ids: list[int], params: SamplingParams, handle: _Handle) -> int:
        rid = next(self._ids)

        def on_token(tok: int) -> None:
            if handle.on_token is not None:
                handle.loop.call_soon_threadsafe(handle.on_token, tok)

        req = Request(prompt_ids, params, rid, on_token if handle.on_token is not None else None)
        handle.request = req
        with self._lock:
            self._handles[rid] = handle
        self._queue.put(req)
        return rid

    def cancel(self, rid: int) -> None:
        """Finish a request early: its row ends at the next generated token (or right away if waiting)."""
        with self._lock:
            h = self._handles.get(rid)
        if h is not None and h.request is not None:
            h.request.params.max_tokens = 1
            h.on_token = None

    # ---- thread side
    def _poll(self, block: bool) -> list[Request]:
        out: list[Request] = []
        if block:
            while not self._stop.is_set():
                try:
                    out.append(self._queue.get(timeout=0.1))
                    break
                except queue.Empty:
                    continue
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def _deliver(self, rid: int, outcome: Result | BaseException) -> None:
        with self._lock:
            h = self._handles.pop(rid, None)
        if h is not None:
            try:
                h.loop.call_soon_threadsafe(h.on_done, outcome)
            except RuntimeError:  # the client's loop is closed: nobody to tell
                pass

    def _fail_all(self, err: BaseException) -> None:
        with self._lock:
            rids = list(self._handles)
        for rid in rids:
            self._deliver(rid, err)

    def _main(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            try:
                for res in self.engine.run([], self._poll):
                    self.served += 1
                    self._deliver(res.request_id, res)
            except Exception as e:  # keep serving: fail what was in flight, restart the loop
                log.exception("engine loop failed; failing in-flight requests and restarting")
                self.restarts += 1
                self._fail_all(RuntimeError(f"generation failed: {e}"))
            # run() returned: either stopping, or (poll answered [] while idle) nothing to do


# ------------------------------------------------------------------------------------ validation
def _int_field(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise APIError(400, f"'{name}' must be an integer (got {v!r})", name)
    if not lo <= v <= hi:
        raise APIError(400, f"'{name}' must be between {lo} and {hi} (got {v})", name)
    return v


def _float_field(body: dict[str, Any], name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise APIError(400, f"'{name}' must be a number (got {v!r})", name)
    v = float(v)
    if v != v or (v <= lo if lo_open else v < lo) or v > hi:
        bracket = "(" if lo_open else "["
        raise APIError(400, f"'{name}' must be in {bracket}{lo}, {hi}] (got {v})", name)
    return v


class ServerState:
    """What the route handlers share: tokenizer, worker, model name, limits."""

    def __init__(self, loaded: LoadedModel, model_name: str, api_key: str | None, max_batch: int,
                 max_len: int | None, max_tokens_limit: int | None, options: InferConfig | None = None) -> None:
        if loaded.tokenizer is None:
            raise ValueError(f"{loaded.path} has no tokenizer; the server needs one to read and write text")
        self.tok: TextTokenizer = loaded.tokenizer
        self.engine = make_engine(loaded.model, self.tok, max_batch=max_batch, max_len=max_len, options=options)
        self.worker = EngineWorker(self.engine)
        self.model_name = model_name
        self.model_ids = [model_name] + ([DEFAULT_MODEL_ALIAS] if model_name != DEFAULT_MODEL_ALIAS else [])
        self.api_key = api_key
        self.max_len = self.engine.max_len
        self.max_tokens_limit = min(max_tokens_limit or self.max_len, self.max_len)
        self.created = int(time.time())
        self.decode = decode_fn(self.tok)

    def parse_common(self, body: dict[str, Any], default_tokens: int) -> tuple[SamplingParams, bool, str, str]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise APIError(400, "'model' is required (see GET /v1/models)", "model", "missing_model")
        if model not in self.model_ids:
            raise APIError(404, f"The model '{model}' does not exist; this server serves "
                                f"{' and '.join(repr(m) for m in self.model_ids)} (the same model)",
                           "model", "model_not_found")
        cond = body.get("condition", "direct")
        if cond is None:
            cond = "direct"
        if not isinstance(cond, str):
            raise APIError(400, f"'condition' must be a string such as 'direct', 'cot' or 'synth,cot' (got {cond!r})", "condition")
        try:
            condition = ",".join(parse_condition(cond))
        except ValueError as e:
            raise APIError(400, str(e), "condition", "unknown_condition") from None
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _int_field(body, key, default_tokens, 1, self.max_tokens_limit)
        # default greedy (OpenAI's default is 1.0): answers of a reasoning model should be reproducible
        temperature = _float_field(body, "temperature", 0.0, 0.0, 2.0)
        top_p = _float_field(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
        top_k = _int_field(body, "top_k", 0, 0, 1 << 20)
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise APIError(400, f"'seed' must be an integer (got {seed!r})", "seed")
        stop = body.get("stop")
        if stop is None:
            stops: list[str] = []
        elif isinstance(stop, str):
            stops = [stop]
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOP_STRINGS:
            stops = list(stop)
        else:
            raise APIError(400, f"'stop' must be a string or a list of at most {MAX_STOP_STRINGS} strings", "stop")
        n = body.get("n", 1)
        if n not in (None, 1):
            raise APIError(400, "only n=1 is supported", "n")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise APIError(400, "'stream' must be true or false", "stream")
        params = SamplingParams(max_tokens=int(max_tokens or default_tokens), temperature=temperature, top_p=top_p,
                                top_k=int(top_k or 0), stop=tuple(stops), seed=seed)
        try:
            params.validate()
        except ValueError as e:
            raise APIError(400, str(e)) from None
        return params, stream, model, condition

    def encode(self, instruction: str, condition: str, param: str) -> list[int]:
        ids = self.tok.encode_prompt(instruction, condition)
        if len(ids) >= self.max_len:
            raise APIError(400, f"This model's maximum context length is {self.max_len} tokens; the prompt has "
                                f"{len(ids)} tokens (with its control tokens) and leaves no room for an answer",
                           param, "context_length_exceeded")
        return ids


async def _json_body(request: HTTPRequest) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"We could not parse the JSON body of your request ({e.msg if hasattr(e, 'msg') else e})",
                       None, "invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", None, "invalid_json")
    return body


# ------------------------------------------------------------------------------------ app
def create_app(
    loaded: LoadedModel,
    model_name: str | None = None,
    api_key: str | None = None,
    max_batch: int = 8,
    max_len: int | None = None,
    max_tokens_limit: int | None = None,
    options: InferConfig | None = None,
) -> FastAPI:
    """Build the FastAPI app serving `loaded` (the engine thread starts with the app's lifespan).

    `model_name` is the id clients pass as `model` (default: the checkpoint folder's name); the
    alias `hrm-text` (DEFAULT_MODEL_ALIAS) names the same model;
    `api_key` enables `Authorization: Bearer <key>` on /v1/*; `max_tokens_limit` caps max_tokens
    (default and upper bound: the context length); `options` are the engine's speed switches.
    """
    from contextlib import asynccontextmanager

    name = model_name or loaded.path.name
    if name.startswith("step_") and loaded.path.parent.name:
        name = f"{loaded.path.parent.name}/{loaded.path.name}"
    state = ServerState(loaded, name, api_key, max_batch, max_len, max_tokens_limit, options)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.worker.start()
        try:
            yield
        finally:
            state.worker.stop()

    app = FastAPI(title="hrm-text", lifespan=lifespan)
    app.state.hrm = state

    @app.exception_handler(APIError)
    async def _api_error(_: HTTPRequest, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: HTTPRequest, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), None, code)

    @app.exception_handler(Exception)
    async def _internal(_: HTTPRequest, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return error_response(500, f"internal server error: {exc}", None, None, "server_error")

    @app.middleware("http")
    async def _auth(request: HTTPRequest, call_next: Callable[[HTTPRequest], Any]) -> Any:
        if state.api_key and request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
                msg = "Missing API key: pass 'Authorization: Bearer <key>'" if not header else "Incorrect API key provided"
                return error_response(401, msg, None, "invalid_api_key")
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok" if state.worker.alive else "engine_down", "model": state.model_name,
                "in_flight": state.worker.pending, "served": state.worker.served, "restarts": state.worker.restarts,
                "max_batch": state.engine.max_batch, "context": state.max_len}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(state, m) for m in state.model_ids]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id not in state.model_ids:
            raise APIError(404, f"The model '{model_id}' does not exist", "model", "model_not_found")
        return _model_card(state, model_id)

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest) -> Any:
        body = await _json_body(request)
        params, stream, model_id, condition = state.parse_common(body, DEFAULT_COMPLETION_TOKENS)
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            texts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt) and len(prompt) <= MAX_PROMPTS:
            texts = list(prompt)
        else:
            raise APIError(400, f"'prompt' must be a string or a non-empty list of at most {MAX_PROMPTS} strings", "prompt")
        if stream and len(texts) != 1:
            raise APIError(400, "streaming supports a single prompt", "prompt")
        prompts = [state.encode(t, condition, "prompt") for t in texts]
        cid = f"cmpl-{uuid.uuid4().hex}"
        if stream:
            return _sse(_stream_completion(state, request, cid, model_id, prompts[0], params, chat=False))
        results = await asyncio.gather(*[_run_one(state, ids, _copy(params)) for ids in prompts])
        choices = [{"index": i, "text": r.text or "", "logprobs": None, "finish_reason": r.finish_reason}
                   for i, r in enumerate(results)]
        return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model_id,
                "choices": choices, "usage": _usage(prompts, results)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest) -> Any:
        body = await _json_body(request)
        params, stream, model_id, condition = state.parse_common(body, DEFAULT_CHAT_TOKENS)
        instruction = _fold_chat(body.get("messages"))
        ids = state.encode(instruction, condition, "messages")
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        if stream:
            return _sse(_stream_completion(state, request, cid, model_id, ids, params, chat=True))
        res = await _run_one(state, ids, params)
        return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text or ""},
                             "logprobs": None, "finish_reason": res.finish_reason}],
                "usage": _usage([ids], [res])}

    return app


def _model_card(state: ServerState, model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": state.created, "owned_by": "hrm-text",
            "context_length": state.max_len}


def _copy(p: SamplingParams) -> SamplingParams:
    """Each request owns its params (cancellation mutates max_tokens)."""
    return SamplingParams(p.max_tokens, p.temperature, p.top_p, p.top_k, tuple(p.stop), p.seed)


def _usage(prompts: list[list[int]], results: list[Result]) -> dict[str, int]:
    p = sum(len(x) for x in prompts)
    c = sum(len(r.token_ids) for r in results)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _fold_chat(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    pairs: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object with 'role' and 'content'", "messages")
        role, content = m.get("role"), m.get("content")
        if role == "developer":  # newer OpenAI clients' name for the system role
            role = "system"
        if isinstance(content, list):  # content parts: keep the text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise APIError(400, f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string", "messages")
        pairs.append((str(role), content))
    try:
        return fold_messages(pairs)
    except ValueError as e:
        raise APIError(400, str(e), "messages") from None


async def _run_one(state: ServerState, ids: list[int], params: SamplingParams) -> Result:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Result] = loop.create_future()

    def done(outcome: Result | BaseException) -> None:
        if fut.done():
            return
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)

    rid = state.worker.submit(ids, params, _Handle(loop, None, done))
    try:
        res = await fut
    except asyncio.CancelledError:
        state.worker.cancel(rid)
        raise
    except RuntimeError as e:
        raise APIError(500, str(e), None, None, "server_error") from None
    return res


def _sse(gen: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream_completion(state: ServerState, request: HTTPRequest, cid: str, model_id: str, ids: list[int],
                             params: SamplingParams, chat: bool) -> AsyncIterator[str]:
    """Server-sent events: one chunk per text delta, a final chunk with finish_reason, then [DONE]."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    decoder = StreamDecoder(state.decode, params.stop)
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        payload = {"id": cid, "object": obj, "created": created, "model": model_id, "choices": [choice]}
        return f"data: {json.dumps(payload)}\n\n"

    rid = state.worker.submit(ids, params, _Handle(loop, lambda t: events.put_nowait(("token", t)),
                                                   lambda o: events.put_nowait(("done", o))))
    finished = False
    try:
        if chat:
            yield chunk("", None, first=True)
        while True:
            kind, value = await events.get()
            if kind == "token":
                delta = decoder.push(value)
                if delta:
                    yield chunk(delta, None)
                continue
            if isinstance(value, BaseException):
                err = {"error": {"message": str(value), "type": "server_error", "param": None, "code": None}}
                yield f"data: {json.dumps(err)}\n\n"
            else:
                rest = decoder.finish(value.text)
                if rest:
                    yield chunk(rest, None)
                yield chunk(None if chat else "", value.finish_reason)
            finished = True
            yield "data: [DONE]\n\n"
            return
    finally:
        if not finished:  # client went away mid-stream
            state.worker.cancel(rid)


def serve(loaded: LoadedModel, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_batch: int = 8, max_len: int | None = None, model_name: str | None = None,
          log_level: str = "info") -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    app = create_app(loaded, model_name=model_name, api_key=api_key, max_batch=max_batch, max_len=max_len)
    uvicorn.run(app, host=host, port=port, log_level=log_level)

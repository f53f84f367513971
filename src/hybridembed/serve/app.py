"""FastAPI app factory: the OpenAI-compatible /v1/embeddings and /v1/models routes, /health, auth and errors."""

from __future__ import annotations

import hmac
import json
import logging
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException

from hybridembed.modeling.model import truncate_embeddings
from hybridembed.serve.batching import BatcherClosed, InvalidInput, MicroBatcher, QueueFull, estimate_tokens
from hybridembed.serve.engine import ServedModel
from hybridembed.serve.metrics import ServerMetrics
from hybridembed.serve.schemas import ApiError, EmbeddingRequest, embeddings_response, error_body, parse_embedding_request
from hybridembed.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

TRUNCATED_HEADER = "x-hybridembed-truncated-inputs"


_STATUS_TYPES = {
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


def create_app(served: ServedModel, settings: ServeSettings | None = None) -> FastAPI:
    """Build the ASGI app serving `served`; the micro-batcher starts and stops with the app's lifespan."""
    settings = settings or ServeSettings()
    forward_batch = settings.forward_batch_size()

    def encode(texts: list[str], prompt_name: str | None):
        return served.encode(texts, prompt_name, batch_size=forward_batch)

    metrics = ServerMetrics()
    batcher = MicroBatcher(
        encode,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        max_batch_tokens=settings.max_batch_tokens,
        cost_fn=partial(estimate_tokens, max_tokens=served.max_seq_length),
        on_batch=lambda texts, result, seconds: metrics.record_batch(len(texts), int(result[1].sum()), seconds),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        if settings.warmup:  # the first pass with new shapes is slow; pay it before the first client
            await batcher.run_in_worker(encode, ["warm-up", "a second, somewhat longer warm-up input"], None)
        logger.info(
            "serving %r (%d dims, at most %d texts per forward pass) with %s",
            served.name,
            served.dim,
            forward_batch,
            settings.public(),
        )
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="hybridembed",
        summary="OpenAI-compatible text-embedding server",
        lifespan=lifespan,
    )
    app.state.served = served
    app.state.batcher = batcher
    app.state.settings = settings
    app.state.metrics = metrics
    _install_error_handlers(app, metrics)
    metrics.install(app, batcher)
    require_key = _auth_dependency(settings.api_key)

    @app.get("/health", summary="Liveness and batching statistics (no API key needed)")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": served.name,
            "queued_texts": batcher.queued_texts,
            "batching": batcher.stats.as_dict(),
        }

    @app.get("/v1/models", dependencies=[Depends(require_key)], summary="The served model")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [served.describe()]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(require_key)], summary="One model")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != served.name:
            raise _unknown_model(model_id, served.name, param=None)
        return served.describe()

    @app.post(
        "/v1/embeddings",
        dependencies=[Depends(require_key)],
        summary="Create embeddings (OpenAI-compatible)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}},
            }
        },
    )
    async def create_embeddings(request: Request) -> Response:
        raw = await _read_body(request, settings.max_body_bytes)
        payload = _decode_json(request.headers.get("content-type"), raw)
        req = parse_embedding_request(payload, max_inputs=settings.max_inputs, max_chars=settings.max_chars, max_dim=served.dim)
        if req.model != served.name:
            raise _unknown_model(req.model, served.name, param="model")
        try:
            embeddings, token_counts, truncated = await batcher.submit(req.input, served.prompt_name_for(req.input_type))
        except QueueFull as err:
            raise ApiError(503, str(err), type="server_error", code="overloaded") from None
        except BatcherClosed as err:
            raise ApiError(503, str(err), type="server_error", code="shutting_down") from None
        except InvalidInput as err:  # the tokenizer refused this text; other requests of its batch were served
            where = "'input'" if isinstance(payload["input"], str) else f"'input[{err.index}]'"
            raise ApiError(400, f"{where} could not be encoded by this model's tokenizer ({err.reason})", param="input") from None
        except Exception:  # the model failed on this request even when encoded alone (logged by the batcher)
            raise ApiError(500, "The server had an error while encoding this request's inputs", type="server_error") from None
        if req.dimensions is not None:
            embeddings = truncate_embeddings(embeddings, req.dimensions)
        body = embeddings_response(
            embeddings,
            model=served.name,
            encoding_format=req.encoding_format or "float",
            prompt_tokens=int(token_counts.sum()),
        )
        headers = {}
        n_truncated = int(truncated.sum())
        metrics.record_answer(len(req.input), int(token_counts.sum()), n_truncated)
        if n_truncated:
            headers[TRUNCATED_HEADER] = str(n_truncated)
        return Response(to_json(body), media_type="application/json", headers=headers)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it (declared or streamed) passes `limit` bytes."""
    too_large = ApiError(413, f"The request body is larger than this server's limit of {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_json(content_type: str | None, raw: bytes) -> Any:
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(
            415,
            f"the request body must be JSON sent with 'Content-Type: application/json' (got {content_type!r})",
            code="unsupported_media_type",
        )
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, f"the request body is not valid JSON: {err}", code="invalid_json") from None


def _unknown_model(asked: str, served: str, param: str | None) -> ApiError:
    return ApiError(
        404,
        f"The model {asked!r} does not exist on this server; it serves {served!r} (see GET /v1/models)",
        param=param,
        code="model_not_found",
    )


def _auth_dependency(api_key: str | None):
    bearer = HTTPBearer(auto_error=False, description="The key from the server's --api-key-env variable")
    expected = api_key.encode("utf-8") if api_key is not None else None

    async def require_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if expected is None:
            return
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise ApiError(
                401,
                "Missing API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers=challenge,
            )
        if not hmac.compare_digest(credentials.credentials.encode("utf-8"), expected):
            raise ApiError(401, "Incorrect API key provided", code="invalid_api_key", headers=challenge)

    return require_key


def _install_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.record_error(exc.status, exc.code)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind, code = _STATUS_TYPES.get(exc.status_code, ("invalid_request_error", None))
        metrics.record_error(exc.status_code, code)
        if exc.status_code >= 500:
            kind = "server_error"
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"Unknown path {request.url.path!r}; this server has POST /v1/embeddings, GET /v1/models, GET /health"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        return JSONResponse(error_body(message, type=kind, code=code), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
        param = ".".join(loc) or None
        metrics.record_error(400, "invalid_request")
        return JSONResponse(error_body(str(first.get("msg", "invalid request")), type="invalid_request_error", param=param), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        metrics.record_error(500, "server_error")
        return JSONResponse(error_body("The server had an error while processing your request", type="server_error"), status_code=500)

"""Request validation and response/error bodies of the OpenAI-compatible embeddings API (pydantic models)."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from hybridembed.data.readers import lone_surrogate


class ApiError(Exception):
    """A request that cannot be served; rendered as OpenAI's `{"error": {...}}` body with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class EmbeddingRequest(BaseModel):
    """Body of `POST /v1/embeddings`.

    Validated with a context `{"max_inputs", "max_chars", "max_dim"}` so that the server's limits
    are enforced in the same pass as the types. Strict: no coercion of `"256"` or `256.0` to an int,
    and unknown fields are rejected (as OpenAI does) so that a typo such as `dimension` fails loudly.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    input: Any = Field(description="A string or a list of strings to embed (token arrays are not supported).")
    model: str = Field(description="The served model id (see GET /v1/models).")
    dimensions: int | None = Field(default=None, description="Keep the first N coordinates (a Matryoshka prefix), re-normalized to unit length.")
    encoding_format: Literal["float", "base64"] | None = Field(
        default=None, description='"float" (default) or "base64" (little-endian float32 bytes, base64-encoded).'
    )
    user: str | None = Field(default=None, description="Accepted for compatibility; ignored.")
    input_type: Literal["query", "document"] | None = Field(
        default=None,
        description="hybridembed extension: apply the model's query or document prompt (see GET /v1/models).",
    )

    @field_validator("input", mode="plain")
    @classmethod
    def _check_input(cls, value: Any, info: ValidationInfo) -> list[str]:
        limits = info.context or {}
        max_inputs = limits.get("max_inputs")
        max_chars = limits.get("max_chars")
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list):
            raise ValueError(f"'input' must be a string or a list of strings, got {_json_type(value)}")
        if not texts:
            raise ValueError("'input' is an empty list; send at least one string")
        if _is_token_array(texts):
            raise ValueError(
                "token-array inputs (lists of integers) are not supported: this server's tokenizer is not "
                "OpenAI's, so send the text itself as a string or a list of strings"
            )
        if max_inputs is not None and len(texts) > max_inputs:
            raise ValueError(f"'input' has {len(texts)} items; this server accepts at most {max_inputs} per request")
        for i, text in enumerate(texts):
            where = "'input'" if isinstance(value, str) else f"'input[{i}]'"
            if not isinstance(text, str):
                raise ValueError(f"{where} must be a string, got {_json_type(text)}")
            if not text:
                raise ValueError(f"{where} is an empty string; every input must contain text")
            surrogate = lone_surrogate(text)
            if surrogate is not None:
                position, codepoint = surrogate
                raise ValueError(
                    f"{where} contains a lone surrogate (U+{codepoint:04X}) at character {position}, which is not "
                    "valid Unicode text and cannot be tokenized; a JSON \\uD800-\\uDFFF escape must be half of a "
                    "surrogate pair"
                )
            if max_chars is not None and len(text) > max_chars:
                raise ValueError(f"{where} has {len(text)} characters; this server accepts at most {max_chars} per input")
        return texts

    @field_validator("dimensions")
    @classmethod
    def _check_dimensions(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            return None
        max_dim = (info.context or {}).get("max_dim")
        if value <= 0:
            raise ValueError(f"'dimensions' must be a positive integer, got {value}")
        if max_dim is not None and value > max_dim:
            raise ValueError(f"'dimensions' is {value} but this model's embeddings have {max_dim} dimensions")
        return value


def _is_token_array(items: list[Any]) -> bool:
    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    first = items[0]
    return is_int(first) or (isinstance(first, list) and bool(first) and is_int(first[0]))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def parse_embedding_request(payload: Any, *, max_inputs: int, max_chars: int, max_dim: int) -> EmbeddingRequest:
    """Validate a decoded JSON body; raise ApiError(400) naming the offending parameter."""
    if not isinstance(payload, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_json_type(payload)}")
    try:
        return EmbeddingRequest.model_validate(payload, context={"max_inputs": max_inputs, "max_chars": max_chars, "max_dim": max_dim})
    except ValidationError as err:
        raise _api_error_from_validation(err) from None


def _api_error_from_validation(err: ValidationError) -> ApiError:
    first = err.errors(include_url=False)[0]
    loc = first.get("loc") or ()
    param = str(loc[0]) if loc else None
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param=param)
    if kind == "missing":
        return ApiError(400, f"you must provide a '{param}' parameter", param=param)
    message = str(first.get("msg", "invalid value"))
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    else:
        message = f"'{param}': {message}, got {_json_type(first.get('input'))}"
        if param == "encoding_format":
            message = f'\'encoding_format\' must be "float" or "base64", got {first.get("input")!r}'
        elif param == "input_type":
            message = f'\'input_type\' must be "query" or "document", got {first.get("input")!r}'
    return ApiError(400, message, param=param)


def embedding_payload(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """One embedding as OpenAI sends it: a list of floats, or base64 of little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32, copy=False).tolist()


def embeddings_response(vectors: np.ndarray, *, model: str, encoding_format: str, prompt_tokens: int) -> dict[str, Any]:
    # one tolist() for the whole matrix: converting row by row costs a call per input
    rows = vectors.astype(np.float32, copy=False).tolist() if encoding_format != "base64" else None
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": rows[i] if rows is not None else embedding_payload(vec, encoding_format)}
            for i, vec in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": int(prompt_tokens), "total_tokens": int(prompt_tokens)},
    }

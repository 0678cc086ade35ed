"""One error shape per API family, for every failure, never a traceback.

TGI routes and our own: ``{"error": message, "error_type": type}``. OpenAI routes (``/v1/...``):
``{"error": {"message", "type", "param", "code"}}``. Messages are short (capped) and built from
what was wrong and where, never from the offending input itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ParamError

log = logging.getLogger("gpt2serve.errors")

MAX_MESSAGE = 300

# error_type -> (TGI-style status, OpenAI type)
ERROR_KINDS = {
    "validation": (422, "invalid_request_error"),
    "not_found": (404, "invalid_request_error"),
    "unauthorized": (401, "authentication_error"),
    "overloaded": (429, "rate_limit_error"),
    "unavailable": (503, "service_unavailable"),
    "too_large": (413, "invalid_request_error"),
    "method_not_allowed": (405, "invalid_request_error"),
    "generation": (424, "server_error"),
    "cancelled": (499, "invalid_request_error"),  # the client closed the request; nobody reads this
    "slow_client": (
        408,
        "invalid_request_error",
    ),  # a stream's client fell too far behind (an event, not a status)
    "internal": (500, "server_error"),
}


class APIError(Exception):
    """A refusal or failure as every family answers it. A bad parameter's error (:meth:`invalid`)
    keeps its name apart from what was wrong, so a family can name it in its own words
    (:meth:`renamed`)."""

    def __init__(self, error_type: str, message: str, *, param: str | None = None, status: int | None = None):
        super().__init__(message)
        self.error_type = error_type
        self.message = cap(message)
        self.param = param
        self.status = status or ERROR_KINDS[error_type][0]
        self.detail: str | None = None  # set by invalid(): the message without the parameter's name

    @classmethod
    def invalid(cls, param: str, detail: str, error_type: str = "validation") -> APIError:
        """``param``'s value is not accepted: ``"<param>: <detail>"``."""
        err = cls(error_type, f"{param}: {detail}", param=param)
        err.detail = detail
        return err

    @classmethod
    def of(cls, exc: ParamError) -> APIError:
        """A value the engine's own checks refused (sampling, the spec, token ids)."""
        return cls.invalid(exc.param, exc.detail)

    def renamed(self, names: Mapping[str, str]) -> APIError:
        """This error with the parameter named as ``names`` says (itself when it has no new name)."""
        if self.detail is None or self.param not in names:
            return self
        return APIError.invalid(names[self.param], self.detail, self.error_type)


def cap(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def is_openai(path: str) -> bool:
    return path.startswith("/v1/")


def error_body(err: APIError, *, openai: bool) -> tuple[int, dict]:
    """The status and JSON body of ``err`` in its family's shape (OpenAI's, or TGI's and ours)."""
    if openai:
        status = 400 if err.error_type == "validation" else err.status
        return status, {
            "error": {
                "message": err.message,
                "type": ERROR_KINDS[err.error_type][1],
                "param": err.param,
                "code": err.error_type,
            }
        }
    return err.status, {"error": err.message, "error_type": err.error_type}


def error_response(request: Request, err: APIError, headers: dict | None = None) -> JSONResponse:
    status, body = error_body(err, openai=is_openai(request.url.path))
    return JSONResponse(body, status_code=status, headers=headers)


def describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    """First problem as ``"<where>: <what>"`` (pydantic's message, not the input value)."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    where = ".".join(loc) or "body"
    msg = first.get("msg", "invalid value")
    if first.get("type") == "json_invalid":
        where, msg, loc = "body", "invalid JSON", []  # loc is ("body", <character offset>): no parameter
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return cap(f"{where}: {msg}{more}"), (loc[-1] if loc else None)


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = describe_validation(exc)
        return error_response(request, APIError("validation", message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = {
            401: "unauthorized",
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
            429: "overloaded",
            503: "unavailable",
        }.get(exc.status_code, "validation" if exc.status_code < 500 else "internal")
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI turns any body it cannot read into a generic 400; say what was wrong.
            cause = exc.__cause__
            problem = (
                "not valid UTF-8" if isinstance(cause, UnicodeDecodeError) else "could not be read as JSON"
            )
            return error_response(request, APIError("validation", f"body: {problem}"))
        return error_response(request, APIError(kind, detail, status=exc.status_code), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, APIError("internal", "internal server error"))

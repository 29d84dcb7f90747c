"""Domain errors and the one place that maps them to gRPC status codes.

Core code raises these exceptions; :class:`ErrorMappingInterceptor` turns them
into statuses with ``google.rpc`` details (``BadRequest`` field violations for
bad input) that clients unpack with :func:`field_violations`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger(__name__)

# Bounds on what an error echoes back, so that a hostile request cannot make an error
# larger than gRPC's metadata limit (16 KB by default; the client would then see
# RESOURCE_EXHAUSTED, which is retried) or flood the log.
MAX_SHOWN_CHARS = 80  # of one value of the caller's quoted in an error
MAX_FIELD_CHARS = 120  # of one violation's field path
MAX_DESCRIPTION_CHARS = 240  # of one violation's description
MAX_VIOLATIONS = 16  # listed one by one; the rest are counted
MAX_MESSAGE_CHARS = 1024  # of a status message
MAX_DETAILS_BYTES = 4096  # of a status with its details, as sent


def shown(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long it was: the way an
    error quotes the caller's input."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} chars" if isinstance(value, str) else f"{len(text)} chars as text"
    return f"{text[:limit]}... ({size})"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


@dataclass(frozen=True)
class FieldViolation:
    field: str  # e.g. "items[3].response"
    description: str


class MoermError(Exception):
    """Base of every error that crosses a service boundary."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(MoermError):
    """The caller's request is wrong; retrying it unchanged will not help."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[FieldViolation] | FieldViolation):
        if isinstance(violations, FieldViolation):
            violations = [violations]
        violations = list(violations)
        self.total = len(violations)  # violations found; only the first MAX_VIOLATIONS are kept
        self.violations = [
            FieldViolation(_cut(v.field, MAX_FIELD_CHARS), _cut(v.description, MAX_DESCRIPTION_CHARS))
            for v in violations[:MAX_VIOLATIONS]
        ]
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations[:4])
        if self.total > 4:
            summary += f"; and {self.total - 4} more"
        super().__init__(_cut(summary, MAX_MESSAGE_CHARS))

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class NotFound(MoermError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(MoermError):
    """A dependency (expert, aggregator, model) cannot serve right now."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(MoermError):
    """A queue is full; the caller should back off and retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(MoermError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(MoermError):
    """A server-side failure that is not the caller's fault."""

    code = grpc.StatusCode.INTERNAL


class BundleError(MoermError):
    """A bundle file is missing, corrupt or inconsistent (names the file)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def to_status(error: MoermError) -> grpc.Status:
    """The status (with details) a server sends for ``error``: at most
    :data:`MAX_DETAILS_BYTES` as sent, whatever the error quotes."""
    status = status_pb2.Status(code=error.code.value[0], message=_cut(str(error), MAX_MESSAGE_CHARS))
    if isinstance(error, InvalidArgument):
        violations = list(error.violations)
        while True:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in violations
                    ]
                )
            )
            if len(detail.SerializeToString()) + len(status.message) * 2 <= MAX_DETAILS_BYTES - 256:
                break
            violations = violations[: len(violations) // 2]  # the first ones say enough
        status.details.append(detail)
    return rpc_status.to_status(status)


def field_violations(error: grpc.RpcError) -> list[FieldViolation]:
    """The ``BadRequest`` field violations carried by a failed call, if any."""
    status = rpc_status.from_call(error)  # works for sync and aio errors
    if status is None:
        return []
    out = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    return out


def from_rpc_error(error: grpc.RpcError, what: str) -> MoermError:
    """Re-raise a downstream call's failure as the domain error it means.

    A downstream INVALID_ARGUMENT keeps its field violations; transport
    failures become UNAVAILABLE naming ``what`` (e.g. "expert 'code'").
    """
    code = error.code()
    details = error.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations = field_violations(error) or [FieldViolation(what, details)]
        return InvalidArgument(violations)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{what}: deadline exceeded")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(f"{what}: {details}")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{what}: {details}")
    return Unavailable(f"{what} is unavailable ({code.name}: {details})")


@dataclass(frozen=True)
class Undecodable:
    """What a handler receives for request bytes that do not parse as its message."""

    message_type: str
    reason: str


def tolerant(deserializer):
    """``deserializer`` that returns :class:`Undecodable` instead of raising, so that bad
    bytes are the caller's INVALID_ARGUMENT and not an UNKNOWN with a traceback."""
    if deserializer is None:
        return None
    name = getattr(getattr(deserializer, "__self__", None), "__name__", "the request message")

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as error:  # DecodeError, or invalid UTF-8 in a string field
            return Undecodable(name, _cut(f"{type(error).__name__}: {error}", 200))

    return parse


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps :class:`MoermError` raised by any unary handler to its status.

    Request bytes that do not parse are INVALID_ARGUMENT. Anything else is logged
    with its traceback and answered INTERNAL, so a server bug never looks like the
    caller's mistake.
    """

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary
        method = handler_call_details.method

        async def guarded(request, context: grpc.aio.ServicerContext):
            try:
                if isinstance(request, Undecodable):
                    raise InvalidArgument.field(
                        "request", f"not a valid {request.message_type} message ({request.reason})"
                    )
                return await behavior(request, context)
            except MoermError as error:
                status = to_status(error)
                log.info("%s -> %s: %s", method, error.code.name, _cut(str(error), 300))
                await context.abort(status.code, status.details, status.trailing_metadata)
            except (grpc.aio.AbortError, grpc.RpcError):
                raise
            except Exception:
                log.exception("unhandled error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see server log")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

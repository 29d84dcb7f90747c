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
        self.violations = list(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(summary)

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
    """The status (with details) a server sends for ``error``."""
    status = status_pb2.Status(code=error.code.value[0], message=str(error))
    if isinstance(error, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.violations
                ]
            )
        )
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


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps :class:`MoermError` raised by any unary handler to its status.

    Anything else is logged with its traceback and answered INTERNAL, so a
    server bug never looks like the caller's mistake.
    """

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary
        method = handler_call_details.method

        async def guarded(request, context: grpc.aio.ServicerContext):
            try:
                return await behavior(request, context)
            except MoermError as error:
                status = to_status(error)
                log.info("%s -> %s: %s", method, error.code.name, error)
                await context.abort(status.code, status.details, status.trailing_metadata)
            except (grpc.aio.AbortError, grpc.RpcError):
                raise
            except Exception:
                log.exception("unhandled error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see server log")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

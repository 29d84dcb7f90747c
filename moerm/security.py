"""Transport security and caller authentication.

**TLS from files.** :func:`server_credentials` serves a certificate and key (PEM);
with a CA it requires client certificates signed by that CA (mutual TLS, as
between the router, the experts and the aggregator). The files are read again
when they change (the next handshake uses them), so a renewed certificate needs no
restart. :func:`channel_credentials` is the client side: the CA to trust, and the
client's own certificate and key for mTLS.

**Tokens.** The public API (the router's ``RewardService``) takes a bearer token in
the call's metadata, ``authorization: Bearer <token>``. A token file holds one
``TOKEN SCOPE[,SCOPE]`` per line (``#`` comments and blank lines are skipped);
the scopes are ``score`` (Score) and ``feedback`` (Feedback), so a client that
may score cannot steer the bandits. Tokens are kept as sha256 digests and every
digest is compared with :func:`hmac.compare_digest`, all of them on every call,
so the time a check takes does not depend on how much of a token was right. The
file is read again when it changes (checked at most every ``check_interval_s``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

SCORE, FEEDBACK = "score", "feedback"
SCOPES = (SCORE, FEEDBACK)
MIN_TOKEN_CHARS = 16
AUTH_HEADER = "authorization"


class SecurityConfigError(ValueError):
    """A token or certificate file that cannot be used (the message names it)."""


# --- TLS -----------------------------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise SecurityConfigError(f"{what} {path}: {error.strerror or error}") from None
    if not data.strip():
        raise SecurityConfigError(f"{what} {path} is empty")
    return data


def _stamp(paths: tuple[str, ...]) -> tuple:
    """What changes when any of ``paths`` is replaced (Kubernetes swaps a Secret's
    files through a symlink, so the inode changes as well as the time)."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: this side's certificate and key, and the CA it trusts."""

    cert: str = ""
    key: str = ""
    ca: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.key or self.ca)

    def check(self, who: str, *, server: bool) -> None:
        """Raise :class:`SecurityConfigError` unless the files make sense together
        and can be read."""
        if bool(self.cert) != bool(self.key):
            raise SecurityConfigError(f"{who}: a TLS certificate needs its key and a key its certificate")
        if server and self.ca and not self.cert:
            raise SecurityConfigError(f"{who}: a TLS CA without a certificate and key to serve")
        for path, what in ((self.cert, "certificate"), (self.key, "key"), (self.ca, "CA")):
            if path:
                _read(path, f"{who}: TLS {what}")


def server_credentials(files: TlsFiles, *, reload: bool = True) -> grpc.ServerCredentials:
    """TLS with ``files.cert``/``files.key``; with ``files.ca``, clients must present a
    certificate signed by that CA (mTLS). With ``reload``, changed files are read
    again before the next handshake (a broken new set keeps the old one)."""

    def configuration():
        return grpc.ssl_server_certificate_configuration(
            [(_read(files.key, "TLS key"), _read(files.cert, "TLS certificate"))],
            root_certificates=_read(files.ca, "TLS CA") if files.ca else None,
        )

    require_client_auth = bool(files.ca)
    if not reload:
        return grpc.ssl_server_credentials(
            [(_read(files.key, "TLS key"), _read(files.cert, "TLS certificate"))],
            root_certificates=_read(files.ca, "TLS CA") if files.ca else None,
            require_client_auth=require_client_auth,
        )
    paths = tuple(p for p in (files.cert, files.key, files.ca) if p)
    lock = threading.Lock()
    seen = {"stamp": _stamp(paths)}

    def fetch():
        with lock:
            stamp = _stamp(paths)
            if stamp == seen["stamp"]:
                return None
            try:
                fresh = configuration()
            except SecurityConfigError as error:
                log.error("TLS files changed but cannot be used, keeping the old ones: %s", error)
                return None
            seen["stamp"] = stamp
            log.info("TLS certificate files changed: reloaded")
            return fresh

    return grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=require_client_auth
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """TLS to a server: trust ``files.ca`` (the system's roots when empty) and present
    ``files.cert``/``files.key`` when given (mTLS). Read once, at start."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(files.ca, "TLS CA") if files.ca else None,
        private_key=_read(files.key, "TLS key") if files.key else None,
        certificate_chain=_read(files.cert, "TLS certificate") if files.cert else None,
    )


# --- tokens --------------------------------------------------------------------------------------


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_tokens(text: str, source: str = "tokens") -> list[tuple[bytes, frozenset[str]]]:
    """``TOKEN SCOPE[,SCOPE]`` lines -> (sha256 of the token, scopes). Errors name
    the line, never the token."""
    entries: dict[bytes, frozenset[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise SecurityConfigError(f"{source}:{number}: expected 'TOKEN SCOPE[,SCOPE]'")
        token, scope_list = parts
        scopes = frozenset(s.strip() for s in scope_list.split(",") if s.strip())
        unknown = sorted(scopes - set(SCOPES))
        if unknown or not scopes:
            raise SecurityConfigError(
                f"{source}:{number}: unknown scope {', '.join(unknown) or '(none)'} "
                f"(scopes: {', '.join(SCOPES)})"
            )
        if len(token) < MIN_TOKEN_CHARS:
            raise SecurityConfigError(
                f"{source}:{number}: a token needs at least {MIN_TOKEN_CHARS} characters"
            )
        digest = _digest(token)
        if digest in entries:
            raise SecurityConfigError(f"{source}:{number}: the same token is listed twice")
        entries[digest] = scopes
    if not entries:
        raise SecurityConfigError(f"{source}: no tokens (every caller would be refused)")
    return list(entries.items())


class TokenFile:
    """The tokens of a file, read again when it changes."""

    def __init__(self, path: str, *, check_interval_s: float = 2.0):
        self.path = path
        self.check_interval_s = check_interval_s
        self._entries = parse_tokens(_read(path, "token file").decode("utf-8"), path)
        self._stamp = _stamp((path,))
        self._checked = time.monotonic()

    def __len__(self) -> int:
        return len(self._entries)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_interval_s:
            return
        self._checked = now
        stamp = _stamp((self.path,))
        if stamp == self._stamp:
            return
        try:
            entries = parse_tokens(_read(self.path, "token file").decode("utf-8"), self.path)
        except (SecurityConfigError, UnicodeDecodeError) as error:
            log.error("token file changed but cannot be used, keeping the old tokens: %s", error)
            return
        self._entries, self._stamp = entries, stamp
        log.info("token file %s changed: %d tokens", self.path, len(entries))

    def scopes(self, token: str) -> frozenset[str] | None:
        """The token's scopes, or None for an unknown token. Compares with every
        known token (no early exit)."""
        self._maybe_reload()
        digest = _digest(token)
        found = None
        for known, scopes in self._entries:
            if hmac.compare_digest(digest, known):
                found = scopes
        return found


def bearer_token(metadata) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, or None."""
    for key, value in metadata or ():
        if key.lower() == AUTH_HEADER:
            scheme, _, token = str(value).strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls of the methods in ``method_scopes`` (full method name ->
    scope needed) without a token holding that scope: UNAUTHENTICATED without
    a token or with an unknown one, PERMISSION_DENIED without the scope. Other
    methods (health, reflection) pass untouched."""

    def __init__(self, tokens: TokenFile, method_scopes: Mapping[str, str]):
        self.tokens = tokens
        self.method_scopes = dict(method_scopes)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        scope = self.method_scopes.get(handler_call_details.method)
        if handler is None or handler.unary_unary is None or scope is None:
            return handler
        behavior = handler.unary_unary
        method = handler_call_details.method.rsplit("/", 1)[-1]
        tokens = self.tokens

        async def authenticated(request, context: grpc.aio.ServicerContext):
            token = bearer_token(context.invocation_metadata())
            if token is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata"
                )
            if not token:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "the authorization metadata must be 'Bearer <token>'"
                )
            scopes = tokens.scopes(token)
            if scopes is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
            if scope not in scopes:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{method} needs a token with scope {scope!r}; this one has {', '.join(sorted(scopes))}",
                )
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            authenticated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def serving_credentials(files: TlsFiles, who: str) -> grpc.ServerCredentials | None:
    """A service's server credentials from its flags (None: plaintext); exits with
    the reason when the files cannot be used."""
    if not files.enabled:
        return None
    try:
        files.check(who, server=True)
        return server_credentials(files)
    except SecurityConfigError as error:
        raise SystemExit(str(error)) from None

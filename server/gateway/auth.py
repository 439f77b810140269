"""Authentication and channel permissions (pure: no I/O).

Tokens are JWTs: HS256 with a shared secret, or RS256/ES256 with a public key.
``sub`` is the user id, ``exp`` is required, ``name`` is optional.

The channel rules (who may subscribe or publish where) are ``Channel.may`` in
``server/channels.py``, next to the one user-id rule a token's ``sub`` follows.

Errors:
    AuthError: the token is missing, malformed, badly signed or expired.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm
from jwt.utils import base64url_decode

from tidings.server.channels import check_user
from tidings.server.errors import TidingsError
from tidings.server.gateway.protocol import ProtocolError

__all__ = ["AuthError", "Principal", "TokenVerifier", "check_api_key", "issue_token"]


class AuthError(TidingsError):
    """A token was rejected; the message is safe to show the client."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user: ``user`` is the token's ``sub``; ``expires_at`` its ``exp`` (Unix seconds)."""

    user: str
    name: str
    expires_at: float


# The one header and the claims the HS256 fast path takes; any other token goes through PyJWT.
_PLAIN_HS256_HEADERS = ({"alg": "HS256", "typ": "JWT"}, {"alg": "HS256"})
_PLAIN_CLAIMS = frozenset({"sub", "exp", "iat", "name", "iss"})


class TokenVerifier:
    """Verifies connect tokens against the configured secret or public key.

    Guarantees: a token is accepted exactly when PyJWT accepts it with our options (``sub`` and
    ``exp`` required, ``exp`` checked here against ``now``, ``iat`` informational). The common
    HS256 token (header ``{"alg": "HS256", "typ": "JWT"}``, plain claims) is checked by a direct
    HMAC-SHA256 comparison, a quarter of PyJWT's cost on a node's busiest path (connects);
    every other token, and every token that path does not accept, is PyJWT's to judge, so
    errors and their messages are PyJWT's.
    """

    def __init__(
        self, *, secret: str | None = None, public_key: str | None = None, leeway: float = 0.0
    ) -> None:
        if secret is None and public_key is None:
            raise ValueError("a token verifier needs TIDINGS_JWT_SECRET or TIDINGS_JWT_PUBLIC_KEY")
        self._keys: list[tuple[Any, list[str]]] = []
        self._hmac_key: bytes | None = None
        if secret is not None:
            self._keys.append((secret, ["HS256"]))
            try:
                self._hmac_key = HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
            except jwt.InvalidKeyError:
                self._hmac_key = None  # a PEM key as a secret: PyJWT refuses every token, so do we
        if public_key is not None:
            self._keys.append((public_key, ["RS256", "ES256"]))
        self._leeway = leeway

    def verify(self, token: str, *, now: float | None = None) -> Principal:
        """Return the token's principal.

        Raises:
            AuthError: the token is malformed, badly signed, expired, or lacks ``sub``/``exp``.
        """
        if len(token) > 8192:
            raise AuthError("token too long")
        if not token.isascii():
            # A JWT is base64url and dots; anything else is malformed (and PyJWT would raise
            # UnicodeEncodeError on a lone surrogate instead of a PyJWTError).
            raise AuthError("malformed token")
        claims = self._plain_hs256_claims(token)
        if claims is not None:
            return self._principal(claims, time.time() if now is None else now)
        last_error: AuthError | None = None
        for key, algorithms in self._keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=algorithms,
                    # exp is checked below against ``now``; iat is informational: a token minted by a
                    # server whose clock runs a little ahead must not be refused as "issued in the future".
                    options={"require": ["sub", "exp"], "verify_exp": False, "verify_iat": False},
                    leeway=self._leeway,
                )
            except jwt.InvalidAlgorithmError:
                last_error = AuthError("token algorithm not accepted")
                continue
            except jwt.InvalidSignatureError:
                last_error = AuthError("bad token signature")
                continue
            except jwt.ImmatureSignatureError as exc:
                raise AuthError("token not yet valid (nbf)") from exc
            except jwt.MissingRequiredClaimError as exc:
                raise AuthError(f"token lacks the {exc.claim} claim") from exc
            except jwt.PyJWTError as exc:
                raise AuthError("malformed token") from exc
            return self._principal(claims, time.time() if now is None else now)
        raise last_error or AuthError("token rejected")

    def _plain_hs256_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a correctly signed plain HS256 token; None for anything else (PyJWT decides)."""
        key = self._hmac_key
        if key is None or token.count(".") != 2:
            return None
        header_b64, payload_b64, signature_b64 = token.split(".")
        try:
            header = json.loads(base64url_decode(header_b64))
            if header not in _PLAIN_HS256_HEADERS:
                return None
            signed = hmac.new(key, f"{header_b64}.{payload_b64}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(signed, base64url_decode(signature_b64)):
                return None
            claims = json.loads(base64url_decode(payload_b64))
        except (ValueError, binascii.Error):
            return None
        if (
            not isinstance(claims, dict)
            or not _PLAIN_CLAIMS.issuperset(claims)
            or not isinstance(claims.get("sub"), str)
            or "exp" not in claims
            or not isinstance(claims.get("iss", ""), str)
        ):
            return None
        return claims

    def _principal(self, claims: dict[str, Any], now: float) -> Principal:
        sub, exp, name = claims.get("sub"), claims.get("exp"), claims.get("name")
        # The user id names the personal channel user:<sub>: the one user-id rule of channels.py.
        try:
            user = check_user(sub, "token sub")
        except ProtocolError as exc:
            raise AuthError(exc.message) from exc
        if not isinstance(exp, (int, float)) or isinstance(exp, bool) or not math.isfinite(exp):
            raise AuthError("token exp must be a number")
        if exp + self._leeway <= now:
            raise AuthError("token expired")
        if not isinstance(name, str) or not name:
            name = user
        return Principal(user, name[:100], float(exp))


def issue_token(
    user: str, secret: str, *, ttl: float = 3600.0, name: str | None = None, now: float | None = None
) -> str:
    """Sign an HS256 token for ``user`` (dev mode, ``tidings token``, tests)."""
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": user, "iat": int(issued), "exp": int(issued + ttl)}
    if name:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm="HS256")


def check_api_key(header: str | None, keys: Iterable[str]) -> bool:
    """Whether an ``Authorization: Bearer <key>`` header carries one of ``keys`` (constant-time compare)."""
    # RFC 7235 2.1: the auth scheme is case-insensitive ("bearer" is as good as "Bearer").
    scheme, _, credentials = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return False
    offered = credentials.strip().encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(offered, key.encode())
    return found

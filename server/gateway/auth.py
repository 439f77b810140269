"""Authentication and channel permissions (pure: no I/O).

Tokens are JWTs: HS256 with a shared secret, or RS256/ES256 with a public key.
``sub`` is the user id, ``exp`` is required, ``name`` is optional.

The channel rules (who may subscribe or publish where) are ``Channel.may`` in
``server/channels.py``, next to the one user-id rule a token's ``sub`` follows.

Errors:
    AuthError: the token is missing, malformed, badly signed or expired.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

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


class TokenVerifier:
    """Verifies connect tokens against the configured secret or public key."""

    def __init__(
        self, *, secret: str | None = None, public_key: str | None = None, leeway: float = 0.0
    ) -> None:
        if secret is None and public_key is None:
            raise ValueError("a token verifier needs TIDINGS_JWT_SECRET or TIDINGS_JWT_PUBLIC_KEY")
        self._keys: list[tuple[Any, list[str]]] = []
        if secret is not None:
            self._keys.append((secret, ["HS256"]))
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

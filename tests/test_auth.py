"""Tokens, channel rules and API keys (pure)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.server.channels import Action, Channel, check_user
from tidings.server.gateway.auth import AuthError, Principal, TokenVerifier, check_api_key, issue_token
from tidings.server.gateway.protocol import ProtocolError

SECRET = "a-secret-that-is-long-enough-for-hs256-and-even-for-hs512-0123456"
NOW = 1_800_000_000.0


def rsa_pair() -> tuple[Any, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public.decode()


def ec_pair() -> tuple[Any, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public.decode()


@pytest.fixture(scope="module")
def rsa_key() -> tuple[Any, str]:
    return rsa_pair()


@pytest.fixture(scope="module")
def ec_key() -> tuple[Any, str]:
    return ec_pair()


def hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": NOW + 60, **extra}


def rejection(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthError) as caught:
        verifier.verify(token, now=NOW)
    return str(caught.value)


# --- tokens -----------------------------------------------------------------------------------------


def test_valid_hs256_token_gives_the_principal() -> None:
    """sub is the user, exp the expiry, name defaults to the user id."""
    principal = TokenVerifier(secret=SECRET).verify(hs256(claims()), now=NOW)
    assert (principal.user, principal.name, principal.expires_at) == ("alice", "alice", NOW + 60)
    named = TokenVerifier(secret=SECRET).verify(hs256(claims(name="Alice A.")), now=NOW)
    assert named.name == "Alice A."


def test_issue_token_round_trips() -> None:
    """issue_token makes a token the verifier accepts until its ttl has passed."""
    token = issue_token("bob", SECRET, ttl=30, name="Bob", now=NOW)
    verifier = TokenVerifier(secret=SECRET)
    assert verifier.verify(token, now=NOW + 29).user == "bob"
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(token, now=NOW + 30)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        pytest.param(hs256(claims(exp=NOW - 1)), "expired", id="expired"),
        pytest.param(hs256(claims(exp=NOW)), "expired", id="expires-now"),
        pytest.param(
            hs256(claims(), "another-secret-which-is-long-enough!!"), "signature", id="bad-signature"
        ),
        pytest.param(hs256({"exp": NOW + 60}), "sub", id="no-sub"),
        pytest.param(hs256({"sub": "alice"}), "exp", id="no-exp"),
        pytest.param(hs256(claims(exp="tomorrow")), "exp", id="exp-string"),
        pytest.param(hs256(claims(sub="")), "sub", id="empty-sub"),
        pytest.param(hs256(claims(sub="a" * 101)), "sub", id="sub-too-long"),
        pytest.param(hs256(claims(sub="a:b")), "sub", id="sub-with-colon"),
        pytest.param(hs256(claims(sub="josé")), "sub", id="sub-not-a-channel-name"),
        pytest.param(hs256(claims(sub="a b")), "sub", id="sub-with-space"),
        pytest.param(hs256(claims(sub=42)), "malformed", id="sub-int"),
        pytest.param(hs256(claims(nbf=NOW + 3600)), "not yet valid", id="not-yet-valid"),
        pytest.param("not-a-jwt", "malformed", id="garbage"),
        pytest.param("a.b.c", "malformed", id="three-garbage-parts"),
        pytest.param("", "malformed", id="empty"),
        pytest.param("é.é.é", "malformed", id="non-ascii"),
        pytest.param("\ud800.x.y", "malformed", id="lone-surrogate"),
        pytest.param("x" * 9000, "too long", id="too-long"),
        pytest.param(jwt.encode(claims(), None, algorithm="none"), "algorithm", id="alg-none"),
        pytest.param(jwt.encode(claims(), SECRET, algorithm="HS512"), "algorithm", id="hs512"),
    ],
)
def test_rejected_tokens(token: str, message: str) -> None:
    """Each bad token raises AuthError with a message that says why (and never a traceback)."""
    assert message in rejection(TokenVerifier(secret=SECRET), token)


def test_iat_in_the_future_is_accepted() -> None:
    """A token minted by a server whose clock runs ahead is still valid: iat is informational."""
    token = hs256(claims(iat=time.time() + 3600))
    assert TokenVerifier(secret=SECRET).verify(token, now=NOW).user == "alice"


def test_leeway_tolerates_clock_skew_on_exp() -> None:
    """With leeway, a token that expired a moment ago still passes."""
    token = hs256(claims(exp=NOW - 2))
    assert TokenVerifier(secret=SECRET, leeway=5).verify(token, now=NOW).user == "alice"


def test_rs256_and_es256_with_public_keys(rsa_key: tuple[Any, str], ec_key: tuple[Any, str]) -> None:
    """RS256 and ES256 tokens verify against their public key."""
    for (private, public), algorithm in ((rsa_key, "RS256"), (ec_key, "ES256")):
        token = jwt.encode(claims(), private, algorithm=algorithm)
        assert TokenVerifier(public_key=public).verify(token, now=NOW).user == "alice"


def test_public_key_verifier_refuses_other_keys_and_hs256(rsa_key: tuple[Any, str]) -> None:
    """A token signed by another private key, or an HS256 token, does not pass a public-key verifier."""
    verifier = TokenVerifier(public_key=rsa_key[1])
    other, _ = rsa_pair()
    assert "signature" in rejection(verifier, jwt.encode(claims(), other, algorithm="RS256"))
    assert "algorithm" in rejection(verifier, hs256(claims()))


def test_public_key_used_as_hmac_secret_is_refused(rsa_key: tuple[Any, str]) -> None:
    """Algorithm confusion: an HS256 token 'signed' with the public PEM is not accepted."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = (
        f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims()).encode())}"
    )
    signature = hmac.new(rsa_key[1].encode(), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64(signature)}"
    rejection(TokenVerifier(public_key=rsa_key[1]), forged)
    rejection(TokenVerifier(secret=SECRET, public_key=rsa_key[1]), forged)


def test_verifier_with_secret_and_public_key_accepts_both(rsa_key: tuple[Any, str]) -> None:
    """Both kinds of token pass when both keys are configured (key rotation between schemes)."""
    verifier = TokenVerifier(secret=SECRET, public_key=rsa_key[1])
    assert verifier.verify(hs256(claims(sub="h")), now=NOW).user == "h"
    assert verifier.verify(jwt.encode(claims(sub="r"), rsa_key[0], algorithm="RS256"), now=NOW).user == "r"


def _outcome(verifier: TokenVerifier, token: str) -> Any:
    try:
        return verifier.verify(token, now=NOW)
    except AuthError as exc:
        return f"refused: {exc}"


def _token(header: dict[str, Any], payload: Any, key: str) -> str:
    """A token signed HS256 over any header and payload (PyJWT would not make some of these)."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    signature = hmac.new(key.encode(), head.encode(), hashlib.sha256).digest()
    return head + "." + b64(signature)


_claim_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**10), 10**10),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.text(max_size=3), max_size=2),
    st.just(NOW + 60),
    st.just(NOW - 60),
)


@settings(max_examples=400, deadline=None)
@given(
    header=st.one_of(
        st.just({"alg": "HS256", "typ": "JWT"}),
        st.just({"alg": "HS256"}),
        st.dictionaries(
            st.sampled_from(["alg", "typ", "kid", "crit"]), st.sampled_from(["HS256", "none", "JWT", 1])
        ),
    ),
    payload=st.one_of(
        st.builds(
            lambda base, extra, dropped: {k: v for k, v in {**base, **extra}.items() if k not in dropped},
            st.fixed_dictionaries(
                {
                    "sub": st.sampled_from(["alice", "bob", "", 7, None]),
                    "exp": st.sampled_from([NOW + 60, NOW - 60, "soon", True]),
                }
            ),
            st.dictionaries(
                st.sampled_from(["iat", "nbf", "name", "iss", "aud", "jti", "other"]),
                _claim_values,
                max_size=3,
            ),
            st.sets(st.sampled_from(["sub", "exp"]), max_size=1),
        ),
        _claim_values,
    ),
    signer=st.sampled_from([SECRET, "another-secret-that-is-long-enough-for-hs256-0123"]),
)
def test_the_hs256_fast_path_accepts_exactly_what_pyjwt_accepts(
    header: Any, payload: Any, signer: str
) -> None:
    """Whatever the header, claims and key: the same principal, or the same refusal, as PyJWT alone."""
    token = _token(header, payload, signer)
    verifier = TokenVerifier(secret=SECRET)
    pyjwt_alone = TokenVerifier(secret=SECRET)
    pyjwt_alone._hmac_key = None  # the PyJWT path only: the reference the fast path must agree with
    assert _outcome(verifier, token) == _outcome(pyjwt_alone, token)


def test_the_fast_path_takes_the_tokens_we_issue() -> None:
    """issue_token's tokens (the dev mode and SDK shape) take the fast path and give the principal."""
    verifier = TokenVerifier(secret=SECRET)
    token = issue_token("alice", SECRET, ttl=60, name="Alice", now=NOW)
    assert verifier._plain_hs256_claims(token) is not None
    assert verifier.verify(token, now=NOW) == Principal("alice", "Alice", NOW + 60)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert verifier._plain_hs256_claims(tampered) is None
    assert rejection(verifier, tampered) == "bad token signature"


def test_verifier_needs_a_key() -> None:
    """No secret and no public key is a configuration error, not an open door."""
    with pytest.raises(ValueError):
        TokenVerifier()


# --- channel rules ----------------------------------------------------------------------------------

S, P = Action.SUBSCRIBE, Action.PUBLISH


@pytest.mark.parametrize(
    ("user", "action", "channel", "allowed"),
    [
        ("alice", S, "room:lobby", True),
        ("alice", P, "room:lobby", True),
        ("alice", S, "user:alice", True),
        ("alice", P, "user:alice", False),
        ("alice", S, "user:bob", False),
        ("alice", P, "user:bob", False),
        ("alice", S, "user:alice2", False),
        ("alice", S, "dm:alice:bob", True),
        ("alice", P, "dm:alice:bob", True),
        ("bob", S, "dm:alice:bob", True),
        ("carol", S, "dm:alice:bob", False),
        ("alice", S, "dm:bob:alice", False),
        ("alice", S, "dm:alice", False),
        ("alice", S, "dm:alice:alice", True),
        ("alice", S, "broadcast", True),
        ("alice", P, "broadcast", False),
        ("alice", S, "sys:control", False),
        ("alice", S, "other:x", False),
    ],
)
def test_channel_rules(user: str, action: Action, channel: str, allowed: bool) -> None:
    """DESIGN.md namespaces: rooms open, user: only its owner (read-only), dm: only its two sorted ids, broadcast read-only.

    A name that is no channel (``dm:alice``, ``other:x``) is refused by Channel.parse before any rule;
    a ``sys:`` channel, which no client can name, allows nothing either.
    """
    if channel.startswith("sys:"):
        parsed = Channel.system(channel.partition(":")[2])
    else:
        try:
            parsed = Channel.parse(channel)
        except ProtocolError:
            assert not allowed
            return
    assert parsed.may(user, action) is allowed


# --- API keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("Bearer k1", True),
        ("Bearer k2", True),
        ("bearer k1", True),
        ("BEARER  k1 ", True),
        ("Bearer k3", False),
        ("Bearer k1x", False),
        ("Bearer ", False),
        ("Bearer", False),
        ("Basic k1", False),
        ("k1", False),
        ("", False),
        (None, False),
        ("Bearer é", False),
    ],
)
def test_api_key_header(header: str | None, allowed: bool) -> None:
    """Only 'Bearer <one of the keys>' passes; the scheme is case-insensitive (RFC 7235)."""
    assert check_api_key(header, ["k1", "k2"]) is allowed


def test_no_api_keys_means_no_access() -> None:
    """With no key configured, no header passes."""
    assert not check_api_key("Bearer ", [])
    assert not check_api_key("Bearer anything", [])


def _verifier_accepts(user: str) -> bool:
    try:
        return TokenVerifier(secret=SECRET).verify(issue_token(user, SECRET), now=time.time()).user == user
    except AuthError:
        return False


def _check_user_accepts(user: str) -> bool:
    try:
        return check_user(user) == user
    except ProtocolError:
        return False


def _is_channel(name: str) -> bool:
    try:
        return Channel.parse(name).text == name
    except ProtocolError:
        return False


user_ids = st.one_of(
    st.text(alphabet="ab9_.@-:é /\n", max_size=6),
    st.sampled_from(["a:b", "a" * 100, "a" * 101, "alice", "a.b@c-d_e", "é", "", "\ud800"]),
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(user=user_ids)
def test_one_user_id_rule(user: str) -> None:
    """check_user (HTTP API, notifications) accepts exactly the ids a token may carry as sub, and their channels."""
    accepted = _check_user_accepts(user)
    assert accepted == _verifier_accepts(user), user
    assert accepted == _is_channel(f"user:{user}"), user
    assert accepted == _is_channel(f"dm:{user}:{user}"), user

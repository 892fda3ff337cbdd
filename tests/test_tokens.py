"""Tokens, durations and the rate limiter: pure functions with time passed in."""

from __future__ import annotations

import pytest

from teleconsult.session.roles import Role
from teleconsult.signaling.ratelimit import TokenBucket
from teleconsult.signaling.tokens import TokenError, mint, parse_ttl, verify

SECRET = "unit-secret-long-enough-for-hmac-sha256-keys-0123"


def test_round_trip() -> None:
    token = mint(SECRET, "ward-3", Role.EXPERT, "Dr. Li", 3600, "li@hospital", now=1000.0)
    grant = verify(SECRET, token, now=2000.0)
    assert (grant.room, grant.identity, grant.name, grant.role) == (
        "ward-3",
        "li@hospital",
        "Dr. Li",
        Role.EXPERT,
    )
    assert grant.expires_at == 4600.0
    assert grant.token_id


@pytest.mark.parametrize(
    ("token", "now", "code"),
    [
        ("", 0.0, "token_missing"),
        ("abc", 0.0, "token_invalid"),
        (
            mint(
                "other-secret-long-enough-for-hmac-sha256-0123456",
                "r",
                Role.EXPERT,
                "x",
                60,
                now=0.0,
            ),
            1.0,
            "token_invalid",
        ),
        (mint(SECRET, "r", Role.EXPERT, "x", 60, now=0.0), 60.0, "token_expired"),
    ],
    ids=["missing", "garbage", "forged", "expired"],
)
def test_refusals(token: str, now: float, code: str) -> None:
    with pytest.raises(TokenError) as e:
        verify(SECRET, token, now=now)
    assert e.value.code == code


def test_bad_room_ids_are_not_minted() -> None:
    for bad in ("", "../etc", "a b", "x" * 65, "-lead"):
        with pytest.raises(ValueError):
            mint(SECRET, bad, Role.EXPERT, "x", 60)


def test_the_recorder_role_is_never_in_a_token() -> None:
    """The recorder is the server's own participant: no token names it, signed or not."""
    import jwt

    with pytest.raises(ValueError):
        mint(SECRET, "r", Role.RECORDER, "x", 60)
    claims = jwt.decode(
        mint(SECRET, "r", Role.EXPERT, "x", 60, now=0.0),
        SECRET,
        algorithms=["HS256"],
        options={"verify_aud": False, "verify_exp": False},
    )
    forged = jwt.encode({**claims, "role": "recorder"}, SECRET, algorithm="HS256")
    with pytest.raises(TokenError) as e:
        verify(SECRET, forged, now=1.0)
    assert e.value.code == "token_invalid"


def test_parse_ttl() -> None:
    assert parse_ttl("90") == 90
    assert parse_ttl("30m") == 1800
    assert parse_ttl("2h") == 7200
    assert parse_ttl("1d") == 86400
    with pytest.raises(ValueError):
        parse_ttl("soon")


def test_token_bucket() -> None:
    b = TokenBucket(rate=10, burst=5, now=0.0)
    assert [b.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert b.take(0.1)  # one token back after 1/rate seconds
    assert not b.take(0.1)
    assert all(b.take(10.0) for _ in range(5))  # refills only up to the burst
    assert not b.take(10.0)

"""The admin API's bearer token (``server.admin_token``; RFC 6750), checked in constant time."""

from __future__ import annotations

import hmac


class AdminToken:
    """``server.admin_token``, replaced on SIGHUP; never logged, compared in constant time."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def replace(self, value: str | None) -> None:
        self._value = value

    def admits(self, authorization: str | None) -> bool:
        if self._value is None:
            return True
        scheme, _, presented = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), self._value.encode())

    def __repr__(self) -> str:
        return "AdminToken(***)" if self._value else "AdminToken(None)"

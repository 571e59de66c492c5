"""Detaching an upstream connection from aiohttp once a response's headers are parsed.

A large blob body is read by a protocol of our own (``upstream.receiver.Receiver``), straight
into our buffers, or, over plain TCP, by a thread from the connection's socket itself
(``Detached.socket``). aiohttp has no public API for that, so this module alone touches its
insides: the response's ``connection`` (its ``transport`` and ``protocol``), the stream
reader's ``read_nowait``, and the protocol's ``transport`` attribute, which is cleared so that
aiohttp's flow control can never resume a transport the new protocol has paused.
``check`` says whether the installed aiohttp still has what this module assumes.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import aiohttp


@dataclass(slots=True)
class Detached:
    """A connection taken from aiohttp: its transport, the body bytes aiohttp had already
    buffered, and aiohttp's protocol, to be told when the connection ends."""
    transport: asyncio.Transport
    already: bytes
    previous: asyncio.BaseProtocol

    def install(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand the transport to ``protocol``; aiohttp lets go of it."""
        self.transport.set_protocol(protocol)
        self.previous.transport = None  # type: ignore[attr-defined]

    def socket(self) -> socket.socket | None:
        """The connection's socket, on a descriptor of its own (``os.dup``), non-blocking,
        for a thread to read the rest of the body from; None behind TLS (uvloop keeps its
        TLS state inside its protocol, out of reach of a blocking ``ssl`` socket) or with no
        socket. The transport must be paused for good first (``install`` of a protocol that
        has stopped reading): the loop never reads the descriptor again, and the transport
        still closes it."""
        if self.transport.get_extra_info("ssl_object") is not None:
            return None
        raw = self.transport.get_extra_info("socket")
        if raw is None:
            return None
        sock = socket.fromfd(raw.fileno(), raw.family, raw.type)   # a dup
        # (Non-blocking, as the loop's descriptor is: both share one file description, so
        # blocking mode here would make the loop's own calls on it block.)
        sock.setblocking(False)
        return sock

    def lost(self, exc: BaseException | None) -> None:
        """Tell aiohttp the connection is gone (its connector forgets it)."""
        self.previous.connection_lost(exc)


def detach(response: aiohttp.ClientResponse) -> Detached | None:
    """Pause aiohttp's reading of ``response`` and take its connection, or None when there
    is none to take (already complete, failed, or released)."""
    connection = response.connection
    if (connection is None or connection.transport is None or connection.protocol is None
            or response.content.is_eof() or response.content.exception() is not None):
        return None
    transport, previous = connection.transport, connection.protocol
    previous.pause_reading()          # aiohttp's reading and its sock_read timer stop here
    already = response.content.read_nowait(-1)    # what came with the headers
    return Detached(transport, already, previous)


def check() -> None:
    """Raise AssertionError, naming this adapter, if aiohttp no longer fits it."""
    where = "pullcache.compat.aiohttp_takeover"
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.connector import Connection
    for name in ("transport", "protocol"):
        assert isinstance(getattr(Connection, name, None), property), \
            f"{where}: aiohttp Connection.{name} is gone (aiohttp {aiohttp.__version__})"
    for name in ("pause_reading", "connection_lost"):
        assert callable(getattr(ResponseHandler, name, None)), \
            f"{where}: aiohttp ResponseHandler.{name} is gone"
    assert "transport" in getattr(ResponseHandler, "__slots__", ()) or \
        hasattr(ResponseHandler, "transport"), f"{where}: ResponseHandler.transport is gone"
    assert callable(getattr(aiohttp.StreamReader, "read_nowait", None)), \
        f"{where}: aiohttp StreamReader.read_nowait is gone"

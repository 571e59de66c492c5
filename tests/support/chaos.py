"""Random faults for a soak: a seeded plan the ``FaultProxy`` draws from for every request.

``proxy.chaos = Chaos(seed=7, rate=0.2)`` makes the proxy fault about one request in five,
each time with a kind drawn at random; ``Chaos.counts`` says how many of each it injected.
Kinds (what real upstreams and the networks between do):

* ``reset``: the body starts, then the connection is aborted with a TCP RST.
* ``stall``: the body starts, then nothing for ``stall_seconds``, then the rest.
* ``drip``: the body goes out at 1 KiB/s for ``drip_seconds``, then at full speed.
* ``garbage``: a run of the body's bytes is replaced by random bytes (length unchanged).
* ``short``: fewer bytes than the correct ``Content-Length``, then a clean close (FIN).
* ``status_500`` … ``status_429``, with ``_ra`` for a ``Retry-After`` header: no upstream call.

Faults touching the body are drawn only for responses that have one (GET with a body).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field

BODY_KINDS = ("reset", "stall", "drip", "garbage", "short")
STATUS_KINDS = ("status_500", "status_502", "status_503", "status_429",
                "status_500_ra", "status_502_ra", "status_503_ra", "status_429_ra")
DRIP_RATE = 1024   # bytes per second
DRIP_STEP = 256


@dataclass
class Draw:
    """The fault chosen for one request. ``fraction``: where in the body it strikes."""
    kind: str
    fraction: float
    seed: int

    @property
    def status(self) -> int:
        return int(self.kind.split("_")[1])

    @property
    def retry_after(self) -> str | None:
        return "1" if self.kind.endswith("_ra") else None


@dataclass
class Chaos:
    seed: int = 0
    rate: float = 0.2
    match: str = "/v2/"
    kinds: tuple[str, ...] = BODY_KINDS + STATUS_KINDS
    stall_seconds: float = 3.0
    drip_seconds: float = 2.0
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def draw(self, method: str, path: str) -> Draw | None:
        """A fault for this request, or None (counted when drawn)."""
        if self.match not in path or path.endswith("/v2/"):
            return None
        with self._lock:
            if self._rng.random() >= self.rate:
                return None
            kinds = self.kinds if method == "GET" else \
                tuple(k for k in self.kinds if k not in BODY_KINDS)
            if not kinds:
                return None
            return Draw(self._rng.choice(kinds), self._rng.random(), self._rng.getrandbits(32))

    def count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self.counts.items()))


class BodyFault:
    """Applies one body ``Draw`` to a response streamed chunk by chunk.

    ``transform(chunk)`` returns what to write (after any wait it imposes), or None when the
    connection must end here (``reset``/``short`` already acted on the transport).
    """

    def __init__(self, draw: Draw, chaos: Chaos, length: int | None, transport) -> None:
        self.draw = draw
        self.chaos = chaos
        self.at = int(draw.fraction * (length or 64 * 1024))
        self.transport = transport
        self.sent = 0
        self.done = False
        self._rng = random.Random(draw.seed)

    async def write(self, response, chunk: bytes) -> bool:
        """Write ``chunk`` through the fault; False: stop streaming (connection ended)."""
        kind, start, end = self.draw.kind, self.sent, self.sent + len(chunk)
        self.sent = end
        if self.done or not (start <= self.at < end or (kind == "drip" and self.at < end)):
            await response.write(chunk)
            return True
        cut = self.at - start if start <= self.at else 0
        if not getattr(self, "_counted", False):
            self._counted = True
            self.chaos.count(kind)
        if kind == "garbage":
            buf = bytearray(chunk)
            n = min(len(buf) - cut, 1 + self._rng.randrange(4096))
            buf[cut:cut + n] = self._rng.randbytes(n)
            self.done = True
            await response.write(bytes(buf))
            return True
        if kind == "drip":
            await response.write(chunk[:cut])
            return await self._drip(response, chunk[cut:])
        await response.write(chunk[:cut])
        self.done = True
        if kind == "stall":
            await asyncio.sleep(self.chaos.stall_seconds)
            await response.write(chunk[cut:])
            return True
        if self.transport is not None:
            if kind == "reset":
                abort_with_rst(self.transport)
            else:   # short: a clean FIN before Content-Length is reached
                self.transport.close()
        return False

    async def _drip(self, response, rest: bytes) -> bool:
        loop = asyncio.get_running_loop()
        until = getattr(self, "_drip_until", None)
        if until is None:
            until = self._drip_until = loop.time() + self.chaos.drip_seconds
        view = memoryview(rest)
        while view and loop.time() < until:
            await response.write(bytes(view[:DRIP_STEP]))
            view = view[DRIP_STEP:]
            await asyncio.sleep(DRIP_STEP / DRIP_RATE)
        if loop.time() >= until:
            self.done = True
        if view:
            await response.write(bytes(view))
        return True


def abort_with_rst(transport) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()

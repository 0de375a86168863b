"""Reading a request body under a deadline and a minimum rate, within the server's memory for bodies.

A body is read before the request takes one of the model's turns (``--max-active``): a client that
sends a byte a second then holds a few bytes of memory and its connection, never a turn, and it is
answered 408 when it misses :class:`Pace`'s deadline or rate. Uvicorn has no timeout for this: its
``timeout_keep_alive`` only runs between requests, and ``limit_concurrency`` counts the slow
connections like any other.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from imgclf.serve.uploads import UploadError

Receive = Callable[[], Awaitable[dict[str, Any]]]  # the ASGI ``receive`` of one request


@dataclass(frozen=True)
class Pace:
    """How fast a body must arrive, counted from the request's headers."""

    timeout: float = 120.0  # seconds for the whole body (--body-timeout)
    min_rate: float = 8 * 1024  # bytes/s it must average once `grace` seconds have passed (--min-body-rate)
    grace: float = 10.0  # seconds before the rate counts: a connection's slow start (--body-grace)

    def time_left(self, elapsed: float, received: int) -> float:
        """Seconds until the body is late, having received ``received`` bytes in ``elapsed`` seconds."""
        late_at = self.timeout
        if self.min_rate > 0:  # the rate fails once min_rate * t passes what came, and never within the grace
            late_at = min(late_at, max(self.grace, received / self.min_rate))
        return late_at - elapsed


async def paced(receive: Receive, pace: Pace, clock: Callable[[], float] = time.monotonic) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, from ASGI ``receive``.

    Raises:
        UploadError: 408 when the body misses ``pace``; 400 when the client closes the connection first.
    """
    start, received = clock(), 0
    while True:
        wait = pace.time_left(clock() - start, received)
        try:
            if wait <= 0:
                raise asyncio.TimeoutError
            message = await asyncio.wait_for(receive(), wait)
        except asyncio.TimeoutError:  # TimeoutError itself only from Python 3.11
            raise _too_slow(pace, received, clock() - start) from None
        if message["type"] == "http.disconnect":
            raise UploadError(400, f"the client closed the connection after {received} bytes of its body")
        chunk = message.get("body", b"")
        received += len(chunk)
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _too_slow(pace: Pace, received: int, elapsed: float) -> UploadError:
    by_rate = pace.min_rate > 0 and max(pace.grace, received / pace.min_rate) < pace.timeout
    missed = (
        f"the server's --min-body-rate of {pace.min_rate / 1024:g} KB/s (after its --body-grace of {pace.grace:g} s)"
        if by_rate
        else f"the server's --body-timeout of {pace.timeout:g} s"
    )
    return UploadError(
        408,
        f"the upload was too slow: {received} bytes in {elapsed:.1f} s, under {missed}; "
        "send the whole body at once, or retry on a faster connection",
    )


class BodyBudget:
    """Bytes of request bodies the server holds at once, being read or waiting for their turn.

    Bodies are read outside the model's turns, so the turns no longer bound their memory: this does.
    A request over it is refused at once (503), never made to wait for bytes other requests hold, so
    requests that each hold part of it cannot wait on one another.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0  # only the event loop's thread changes it

    def share(self) -> BodyShare:
        return BodyShare(self)


class BodyShare:
    """One request's part of a :class:`BodyBudget`: taken chunk by chunk, given back once it is answered."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget, self.taken = budget, 0

    def take(self, size: int) -> None:
        """Count ``size`` more bytes of this body.

        Raises:
            UploadError: 503 when the budget cannot hold them now.
        """
        budget = self.budget
        if budget.held + size > budget.limit:
            raise UploadError(
                503,
                f"the server is holding {math.ceil(budget.held / 2**20)} MB of uploads, its "
                "limit (--max-active x --max-request-mb); retry shortly",
            )
        budget.held += size
        self.taken += size

    def release(self) -> None:
        self.budget.held -= self.taken
        self.taken = 0

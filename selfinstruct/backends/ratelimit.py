"""Client-side pacing for a remote server: a requests- or tokens-per-minute limit, and a
shared pause that every request honours after a server said "429, retry after N seconds".

`RateLimiter` is a virtual-clock (GCRA) limiter: each `acquire(amount)` books its share of
the rate at the end of the queue and waits until the booking is less than `burst_s` ahead of
now. Bookings are made in call order, so concurrent callers are served first come, first
served, and an amount larger than the burst never deadlocks: it goes when the queue is
clear and the callers after it wait it off. `adjust()` corrects a booking afterwards (a
token estimate made before the request against the usage the server reported).
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    def __init__(self, per_minute: float, burst_s: float = 1.0, *, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep):
        if per_minute <= 0:
            raise ValueError("RateLimiter needs a positive rate; use no limiter for 'no limit'")
        self.rate = per_minute / 60.0  # units per second
        self.burst_s = burst_s
        self._clock = clock
        self._sleep = sleep
        self._tat = clock()  # when the units booked so far are paid off

    def reserve(self, amount: float = 1.0) -> float:
        """Book `amount` units; return how long the caller must wait before using them."""
        now = self._clock()
        start = max(self._tat, now)
        self._tat = start + amount / self.rate
        return max(0.0, start - now - self.burst_s)

    async def acquire(self, amount: float = 1.0) -> float:
        delay = self.reserve(amount)
        if delay > 0:
            await self._sleep(delay)
        return delay

    def adjust(self, amount: float) -> None:
        """Add (or, negative, give back) units to what was booked. Giving back more than is
        outstanding earns no credit: bookings never start before now."""
        self._tat += amount / self.rate


class Cooldown:
    """A pause shared by all requests to one server: set from a 429's Retry-After."""

    def __init__(self, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep):
        self._until = 0.0
        self._clock = clock
        self._sleep = sleep

    def extend(self, seconds: float) -> None:
        self._until = max(self._until, self._clock() + seconds)

    async def wait(self) -> float:
        delay = self._until - self._clock()
        if delay > 0:
            await self._sleep(delay)
            return delay
        return 0.0

"""Client-side pacing (requests/tokens per minute, the shared 429 pause) and Retry-After parsing,
on a fake clock: exact delays, no waiting."""

from __future__ import annotations

import asyncio
import email.utils
import time

import pytest

from selfinstruct.backends.openai_remote import parse_retry_after
from selfinstruct.backends.ratelimit import Cooldown, RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_requests_are_spaced_at_the_rate_after_the_burst():
    clock = FakeClock()
    limiter = RateLimiter(60, burst_s=0.0, clock=clock)  # one a second, no burst
    assert [limiter.reserve() for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]


def test_a_burst_of_one_second_lets_that_many_go_at_once():
    clock = FakeClock()
    limiter = RateLimiter(120, burst_s=1.0, clock=clock)  # two a second
    assert [limiter.reserve() for _ in range(5)] == [0.0, 0.0, 0.0, 0.5, 1.0]


def test_time_passing_frees_capacity():
    clock = FakeClock()
    limiter = RateLimiter(60, burst_s=0.0, clock=clock)
    assert limiter.reserve() == 0.0
    assert limiter.reserve() == 1.0
    clock.now += 10  # idle for a while: the backlog is paid and no credit piles up beyond the burst
    assert [limiter.reserve() for _ in range(2)] == [0.0, 1.0]


def test_an_amount_larger_than_the_burst_goes_when_the_queue_is_clear_and_the_next_waits_it_off():
    clock = FakeClock()
    limiter = RateLimiter(600, burst_s=1.0, clock=clock)  # 10 tokens a second
    assert limiter.reserve(50) == 0.0
    assert limiter.reserve(1) == pytest.approx(4.0)  # 5 s of tokens booked, minus the 1 s burst


def test_adjust_corrects_an_estimate_both_ways():
    clock = FakeClock()
    limiter = RateLimiter(600, burst_s=0.0, clock=clock)
    limiter.reserve(100)  # estimated 100 tokens: 10 s booked
    limiter.adjust(-60)  # the server counted 40
    assert limiter.reserve(1) == pytest.approx(4.0)
    limiter.adjust(+20)  # and another caller used 20 more than booked
    assert limiter.reserve(1) == pytest.approx(6.1)


def test_acquire_sleeps_the_booked_delay():
    clock = FakeClock()
    limiter = RateLimiter(60, burst_s=0.0, clock=clock, sleep=clock.sleep)

    async def go() -> list[float]:
        return [await limiter.acquire() for _ in range(3)]

    # Each acquire sleeps on the fake clock, so the next one finds the time already advanced.
    assert asyncio.run(go()) == [0.0, 1.0, 1.0]
    assert clock.slept == [1.0, 1.0]


def test_rate_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0)


def test_cooldown_pauses_until_the_latest_deadline():
    clock = FakeClock()
    cooldown = Cooldown(clock=clock, sleep=clock.sleep)
    cooldown.extend(2.0)
    cooldown.extend(0.5)  # a shorter pause never shortens a longer one
    assert asyncio.run(cooldown.wait()) == pytest.approx(2.0)
    assert asyncio.run(cooldown.wait()) == 0.0


@pytest.mark.parametrize("headers, expected", [
    ({"retry-after-ms": "250", "retry-after": "7"}, 0.25),  # the finer one wins (OpenAI sends both)
    ({"retry-after": "3"}, 3.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"retry-after": "soon"}, None),
    ({}, None),
    (None, None),
])
def test_parse_retry_after(headers, expected):
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after({"retry-after": when}) <= 30

"""Reconnect delays: capped exponential back-off with jitter, based on the server's hint."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """``delay()`` grows ``base * 2**failures`` up to ``maximum``; ``reset()`` after a success.

    Each delay is drawn from ``[d, 1.5 d]``, so a thousand clients dropped at once by a restarting
    server come back spread over time rather than in one wave, and none comes back sooner than
    the server asked (its SSE ``retry:`` hint becomes ``base``).
    """

    __slots__ = ("_failures", "_random", "base", "maximum")

    def __init__(
        self,
        base: float = 1.0,
        maximum: float = 30.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.maximum = maximum
        self._random = rng
        self._failures = 0

    def delay(self) -> float:
        """The wait before the next attempt; each call counts one more failure."""
        d = min(self.maximum, self.base * 2.0 ** min(self._failures, 32))
        self._failures += 1
        return d * (1 + self._random() / 2)

    def reset(self) -> None:
        self._failures = 0

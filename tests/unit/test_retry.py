"""The acknowledged writer without a broker: retried with the backoff until the write returns, given
up once it is no longer ours, each refusal heard, and one error line per ``log_every_s`` (a clock
the test moves; the backoff's waits recorded, not slept)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import pytest

from stream.errors import DeadLetterError
from stream.retry import AckedWriter, Backoff

BACKOFF = Backoff(base_s=1.0, cap_s=2.0)


class _Clock:
    """Monotonic seconds that move only when the writer waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()

    async def sleep(delay: float) -> None:
        clock.waits.append(delay)
        clock.now += delay

    monkeypatch.setattr("stream.retry.asyncio.sleep", sleep)
    return clock


class _Sends:
    """A write Kafka refuses ``refusals`` times, then acknowledges."""

    def __init__(self, refusals: int, *, permanent: bool = False) -> None:
        self.refusals = refusals
        self.permanent = permanent
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.refusals:
            raise DeadLetterError("t", 0, self.calls, "Broker: timed out", permanent=self.permanent)
        return "letter"


def _writer(
    clock: _Clock,
    counted: list[int],
    *,
    backoff: Backoff = BACKOFF,
    rng: random.Random | None = None,
    context: Callable[[], str] = str,
) -> AckedWriter[DeadLetterError]:
    return AckedWriter(
        DeadLetterError,
        what="dead-letter writes",
        backoff=backoff,
        rng=rng or random.Random(7),
        log=logging.getLogger("tests.retry"),
        count=lambda: counted.append(1),
        context=context,
        log_every_s=5.0,
        clock=clock,
    )


async def test_a_write_is_retried_with_the_backoff_until_acknowledged(clock: _Clock) -> None:
    counted: list[int] = []
    writer = _writer(clock, counted)
    send = _Sends(refusals=3)

    assert await writer.write(send) == "letter"

    assert send.calls == 4
    assert writer.failures == 3
    assert len(counted) == 3, "every failure is counted"
    rng = random.Random(7)
    assert clock.waits == [BACKOFF.delay(attempt, None, rng) for attempt in (1, 2, 3)]


async def test_a_write_no_longer_ours_is_given_up_at_its_next_failure(clock: _Clock) -> None:
    counted: list[int] = []
    writer = _writer(clock, counted)
    send = _Sends(refusals=1_000, permanent=True)
    heard: list[int] = []
    ours = [True, True, False]

    result = await writer.write(
        send, ours=lambda: ours.pop(0), refused=lambda exc: heard.append(exc.offset)
    )

    assert result is None
    assert send.calls == 3
    assert len(counted) == 3, "the failure that finds it is not ours any more counts too"
    assert heard == [1, 2], "refusals are heard only while the write is ours"
    assert len(clock.waits) == 2, "no wait after giving up"


class _Longest(random.Random):
    """Jitter that always waits the longest the backoff allows."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_failures_are_logged_once_per_period_and_counted_in_the_line(
    clock: _Clock, caplog: pytest.LogCaptureFixture
) -> None:
    counted: list[int] = []
    writer = _writer(
        clock,
        counted,
        backoff=Backoff(base_s=1.0, cap_s=1.0),  # with _Longest: a failure a second
        rng=_Longest(),
        context=lambda: "; 2 partitions wait",
    )
    send = _Sends(refusals=12)

    with caplog.at_level(logging.ERROR, logger="tests.retry"):
        await writer.write(send)

    # Failures at 0, 1, ..., 11 s: a line at 0, 5 and 10 s, each counting the failures so far.
    assert [r.getMessage() for r in caplog.records] == [
        f"dead-letter write for t[0]@{n} failed: Broker: timed out; retry {n} in 1.0 s "
        f"({n} dead-letter writes failed so far); 2 partitions wait"
        for n in (1, 6, 11)
    ]
    assert writer.failures == len(counted) == 12


async def test_an_error_that_is_not_a_refusal_goes_up(clock: _Clock) -> None:
    writer = _writer(clock, [])

    async def broken() -> str:
        raise RuntimeError("the producer broke")

    with pytest.raises(RuntimeError, match="the producer broke"):
        await writer.write(broken)
    assert writer.failures == 0
    assert clock.waits == []

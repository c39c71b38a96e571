"""Waiting for a condition, with a deadline: the one way the tests and the benchmarks wait.

A test never sleeps a fixed time and then asserts: it polls a condition until it holds, and fails
with :class:`TimedOut` (an ``AssertionError``, so pytest reports a failure, not an error) once the
deadline passed. :func:`wait_until` polls from a thread; :func:`wait_until_async` from inside an
event loop, where blocking would stop what is being waited for. Both return the
``time.monotonic()`` at which the condition first held, for callers that time what they waited for.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["TimedOut", "What", "wait_until", "wait_until_async"]


class TimedOut(AssertionError):
    """A condition did not hold before its deadline; the message names what was awaited."""


What = str | Callable[[], str]
"""What a wait is for, in the message it fails with; a function is called only then, so that the
message can show the state at the deadline (a log's tail, say)."""


class _Deadline:
    def __init__(self, timeout_s: float, what: What, condition: object) -> None:
        self._end = time.monotonic() + timeout_s
        self._timeout_s = timeout_s
        self._what = what or getattr(condition, "__qualname__", repr(condition))

    def check(self) -> None:
        if time.monotonic() > self._end:
            what = self._what if isinstance(self._what, str) else self._what()
            raise TimedOut(f"timed out after {self._timeout_s:g} s waiting for {what}")


def wait_until(
    condition: Callable[[], object], *, timeout_s: float, interval_s: float = 0.1, what: What = ""
) -> float:
    """Call ``condition`` every ``interval_s`` until it returns something true."""
    deadline = _Deadline(timeout_s, what, condition)
    while not condition():
        deadline.check()
        time.sleep(interval_s)
    return time.monotonic()


async def wait_until_async(
    condition: Callable[[], object | Awaitable[object]],
    *,
    timeout_s: float,
    interval_s: float = 0.01,
    what: What = "",
) -> float:
    """``wait_until`` for a coroutine: ``condition`` may be a plain function or a coroutine
    function, and the loop runs on between two calls."""
    deadline = _Deadline(timeout_s, what, condition)
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return time.monotonic()
        deadline.check()
        await asyncio.sleep(interval_s)

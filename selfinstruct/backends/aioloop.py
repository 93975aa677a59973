"""An asyncio event loop on a background thread, for backends that keep many requests in
flight while the caller's thread filters and persists replies.

Network I/O, timeouts and retry back-offs progress on the loop thread whatever the caller
is doing; the caller submits coroutines and collects their results as
`concurrent.futures.Future`s. Everything that reads the caller's state (e.g. building the
next prompt from the pool) stays on the caller's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine, Iterable, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "selfinstruct-aio"):
        self.loop = asyncio.new_event_loop()
        self._tasks: dict[concurrent.futures.Future, asyncio.Task] = {}  # touched on the loop thread only
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:
            if not fut.set_running_or_notify_cancel():  # cancelled before it started
                coro.close()
                return
            task = self.loop.create_task(coro)
            self._tasks[fut] = task
            task.add_done_callback(lambda t: self._finish(fut, t))

        self.loop.call_soon_threadsafe(start)
        return fut

    def _finish(self, fut: concurrent.futures.Future, task: asyncio.Task) -> None:
        self._tasks.pop(fut, None)
        if task.cancelled():
            fut.set_exception(concurrent.futures.CancelledError())
        elif task.exception() is not None:
            fut.set_exception(task.exception())
        else:
            fut.set_result(task.result())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for its result."""
        return self.submit(coro).result(timeout)

    def cancel(self, futures: Iterable[concurrent.futures.Future], timeout: float = 10.0) -> None:
        """Cancel submitted coroutines and wait until they have unwound (their sockets closed)."""
        futures = [f for f in futures if not f.done()]
        for f in futures:
            f.cancel()  # succeeds for those not started yet

        async def cancel_started() -> None:
            tasks = [self._tasks[f] for f in futures if f in self._tasks]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)

        if futures and not self.loop.is_closed():
            try:
                self.call(cancel_started(), timeout + 1)
            except concurrent.futures.TimeoutError:
                pass

    def close(self, timeout: float = 10.0) -> None:
        """Cancel whatever still runs, stop the loop and join its thread."""
        if self.loop.is_closed():
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)
            await self.loop.shutdown_asyncgens()

        try:
            self.call(shutdown(), timeout + 1)
        except concurrent.futures.TimeoutError:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()

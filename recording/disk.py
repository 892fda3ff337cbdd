"""A recorder's file work, done in a thread of its own so that a slow disk never holds the
event loop that forwards every room's packets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("teleconsult.recording")

# What may wait for the disk before the recording gives up: about a minute of a 4 Mbit/s
# feed. A disk that falls this far behind will not catch up while the session goes on.
BACKLOG_BYTES = 32 * 1024 * 1024


# A job, the bytes it carries, and whether it runs even after a failure.
Job = tuple[Callable[[], object], int, bool]


class DiskBehind(OSError):
    """The disk fell too far behind what is being recorded."""


class DiskQueue:
    """Runs jobs in order in one thread, behind a queue bounded in bytes.

    `put` never blocks. The first job that fails with OSError stops the rest, and
    `on_error` hears of it on the event loop; so does a backlog over the bound.
    """

    def __init__(
        self,
        name: str,
        on_error: Callable[[OSError], None],
        limit: int = BACKLOG_BYTES,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.on_error = on_error
        self.limit = limit
        self.waiting = 0  # bytes queued and not yet written
        self.failed: OSError | None = None
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._done = asyncio.Event()
        self._closed = False
        self._broken = False  # set by the thread at its first failure; `failed` by the loop
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, job: Callable[[], object], size: int = 0, finishing: bool = False) -> bool:
        """Queue a job carrying `size` bytes; False when refused (failed, closed or too far
        behind). A `finishing` job (closing a file, the last manifest) runs even after a
        failure: what was written is made whole if the disk lets it."""
        if self._closed or (not finishing and (self.failed is not None or self._broken)):
            return False
        with self._lock:
            if self.waiting + size > self.limit:
                behind = self.waiting
                refused = True
            else:
                self.waiting += size
                refused = False
        if refused:
            self._fail(DiskBehind(f"the disk is {behind / 2**20:.0f} MiB behind the recording"))
            return False
        self._jobs.put((job, size, finishing))
        return True

    def close(self) -> None:
        """Let the jobs queued so far finish, then end the thread."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)

    async def finished(self, timeout: float) -> bool:
        """Wait until every queued job has run (True), or the timeout."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def _fail(self, error: OSError) -> None:
        if self.failed is None:
            self.failed = error
            self.on_error(error)

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                break
            job, size, finishing = item
            if not self._broken or finishing:
                try:
                    job()
                except OSError as e:
                    if not self._broken:
                        self._broken = True  # what follows a failed write is not written
                        self.tell(self._fail, e)
                    else:
                        log.warning("a recording could not be finished: %s", e.strerror or e)
                except Exception:  # a bug must not kill the thread and lose the rest
                    log.exception("a recording job failed")
            with self._lock:
                self.waiting -= size
        self.tell(self._done.set)

    def tell(self, callback: Callable[..., None], *args: object) -> None:
        """Call back on the event loop, from the writer thread."""
        # A closed loop: the process is ending and nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(callback, *args)

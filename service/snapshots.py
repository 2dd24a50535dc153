"""Writing the index's FAISS snapshot while the server runs, so a restart replays little.

Every acknowledged change is already durable in SQLite; the snapshot (``codes.<gen>.faiss``,
``columns.<gen>.npz`` and the manifest that commits them as one) only bounds how much of that
journal the next start has to replay. :class:`Snapshotter` flushes the index on its own thread,
never on the event loop and never in a request's worker, when either

- ``every_changes`` adds and removals have accumulated since the last snapshot, or
- ``every_seconds`` have passed since the last snapshot and there was at least one change.

A flush holds the store's write lock only while it copies the in-memory codes; searches go on
while the files are written. A failed flush is logged and retried after ``every_seconds`` (the
data is safe in SQLite meanwhile).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)


class Flushable(Protocol):
    """The two members of `indexer.index.protocol.IndexParts` the snapshotter uses (its tests
    drive it with a counting stand-in that has only these)."""

    @property
    def unsaved_changes(self) -> int: ...

    def flush(self) -> None: ...


class Snapshotter:
    """Flushes ``index`` after ``every_changes`` changes or ``every_seconds`` with changes.

    Either trigger is off when set to 0. Call :meth:`changed` after each add or remove (from any
    thread), :meth:`start` once, and :meth:`close` before closing the index.
    """

    def __init__(
        self,
        index: Flushable,
        *,
        every_changes: int,
        every_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_changes < 0 or every_seconds < 0:
            raise ValueError("snapshot intervals must not be negative")
        self._index = index
        self.every_changes = every_changes
        self.every_seconds = every_seconds
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = False
        self._last_snapshot = clock()
        self._retry_at = -math.inf
        self.snapshots = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="histosearch-snapshot", daemon=True)

    @property
    def enabled(self) -> bool:
        return self.every_changes > 0 or self.every_seconds > 0

    def start(self) -> None:
        """Start the thread; it flushes at once if opening left enough unsaved changes (a long
        replay, or a snapshot rebuilt from SQLite), so the next start does not redo that work."""
        if self.enabled:
            self._thread.start()
            self.changed()

    def changed(self) -> None:
        """Note that the index changed; wakes the snapshot thread once enough changes piled up."""
        if self.every_changes and self._index.unsaved_changes >= self.every_changes:
            self._wake.set()

    def close(self) -> None:
        """Stop the thread, waiting for a flush in progress (the index's close flushes the rest)."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._seconds_to_next_check())
            self._wake.clear()
            if self._stopping:
                return
            now = self._clock()
            unsaved = self._index.unsaved_changes
            if now < self._retry_at:
                continue
            if self._enough_changes(unsaved) or (unsaved and self._interval_passed(now)):
                self._flush(unsaved)
            elif not unsaved and self._interval_passed(now):
                # Nothing to save: start the next interval from here rather than waking at once.
                self._last_snapshot = now

    def _seconds_to_next_check(self) -> float | None:
        """How long to sleep: until a retry or the interval is due; None waits for a wake."""
        now = self._clock()
        if now < self._retry_at:
            return self._retry_at - now
        if not self.every_seconds:
            return None
        return max(0.0, self._last_snapshot + self.every_seconds - now)

    def _enough_changes(self, unsaved: int) -> bool:
        return bool(self.every_changes) and unsaved >= self.every_changes

    def _interval_passed(self, now: float) -> bool:
        return bool(self.every_seconds) and now - self._last_snapshot >= self.every_seconds

    def _flush(self, unsaved: int) -> None:
        started = self._clock()
        try:
            self._index.flush()
        except Exception:
            self.failures += 1
            # Back off instead of retrying at every change; the journal in SQLite keeps the data.
            self._retry_at = started + max(self.every_seconds, 1.0)
            logger.exception("writing the index snapshot failed; retrying later")
            return
        self.snapshots += 1
        self._last_snapshot = started
        logger.info(
            "index snapshot written (%d changes, %.0f ms)",
            unsaved,
            (self._clock() - started) * 1000.0,
        )

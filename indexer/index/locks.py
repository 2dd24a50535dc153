"""A readers-writer lock: many concurrent searches, one writer at a time, writers not starved."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType


class _ReadAccess:
    """``with lock.reading():`` as a plain class: a search takes it every time, and a generator
    context manager would cost several times more than the lock itself."""

    __slots__ = ("_lock",)

    def __init__(self, lock: ReadWriteLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire_read()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._lock.release_read()


class ReadWriteLock:
    """Shared access for readers, exclusive for writers; a waiting writer blocks new readers."""

    def __init__(self) -> None:
        # Readers take the bare mutex (a C-level context manager) and the condition only to wait:
        # a search takes the lock twice, and Condition's own methods are Python code.
        self._mutex = threading.Lock()
        self._condition = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._read_access = _ReadAccess(self)

    def reading(self) -> _ReadAccess:
        return self._read_access

    def acquire_read(self) -> None:
        with self._mutex:
            while self._writer or self._writers_waiting:
                self._condition.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._mutex:
            self._readers -= 1
            if not self._readers and self._writers_waiting:
                self._condition.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._condition:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._condition.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._condition:
                self._writer = False
                self._condition.notify_all()

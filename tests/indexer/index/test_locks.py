"""ReadWriteLock: readers share, a writer is alone, and a waiting writer is not starved."""

import threading
import time

from indexer.index.locks import ReadWriteLock

WAIT = 5.0


def test_readers_hold_the_lock_together():
    lock = ReadWriteLock()
    both_inside = threading.Barrier(2, timeout=WAIT)

    def read() -> None:
        with lock.reading():
            both_inside.wait()  # breaks (and raises) if the second reader is kept out

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not both_inside.broken


def test_writer_waits_for_readers_and_new_readers_wait_for_the_writer():
    lock = ReadWriteLock()
    events: list[str] = []
    reader_inside, release_reader = threading.Event(), threading.Event()

    def first_reader() -> None:
        with lock.reading():
            reader_inside.set()
            release_reader.wait(WAIT)
            events.append("first reader leaves")

    def writer() -> None:
        with lock.writing():
            events.append("writer")

    def late_reader() -> None:
        with lock.reading():
            events.append("late reader")

    threads = [threading.Thread(target=first_reader)]
    threads[0].start()
    assert reader_inside.wait(WAIT)
    threads.append(threading.Thread(target=writer))
    threads[1].start()
    _wait_until(lambda: lock._writers_waiting == 1)
    threads.append(threading.Thread(target=late_reader))
    threads[2].start()
    time.sleep(0.05)  # the late reader must now be queued behind the writer, not inside
    assert events == []
    release_reader.set()
    for thread in threads:
        thread.join(WAIT)
    assert events == ["first reader leaves", "writer", "late reader"]


def _wait_until(condition, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)

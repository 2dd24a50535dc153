"""Fair shares of the workers: greedy clients wait behind themselves, an ordinary one gets
through. Orderings and completions are asserted, never durations."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from service.errors import ServiceError
from service.fairness import FairScheduler
from tests.service import samples
from tests.service.conftest import LiveServer

GREEDY_CLIENTS = 4
GREEDY_REQUESTS = 4
ORDINARY_SEARCHES = 5


def run_jobs(scheduler: FairScheduler, jobs: list[tuple[str, float]]) -> list[str]:
    """Submit (client, cost) jobs in order, all at once; the order in which they started."""
    ran: list[str] = []
    gate = threading.Event()

    def job(name: str) -> None:
        ran.append(name)
        gate.wait(timeout=30)  # the first jobs hold their threads until every job is queued

    async def main() -> None:
        tasks = []
        for number, (client, cost) in enumerate(jobs):
            name = f"{client}{number}"
            tasks.append(
                asyncio.create_task(
                    scheduler.run(lambda name=name: job(name), client=client, cost=cost)  # type: ignore[misc]
                )
            )
            await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    scheduler.close()
    return ran


def test_a_light_job_runs_next_however_many_heavy_ones_a_greedy_client_queued() -> None:
    scheduler = FairScheduler(
        workers=1, max_pending=100, max_in_flight_per_client=100, heavy_cost=1e9
    )
    jobs = [("greedy", 36.0)] * 6 + [("ordinary", 0.5)]
    ran = run_jobs(scheduler, jobs)
    # The greedy client's first job already held the worker; the ordinary one is next.
    assert ran[:2] == ["greedy0", "ordinary6"]


def test_clients_with_equal_costs_take_turns() -> None:
    scheduler = FairScheduler(
        workers=1, max_pending=100, max_in_flight_per_client=100, heavy_cost=1e9
    )
    jobs = [("a", 1.0)] * 3 + [("b", 1.0)] * 3
    assert run_jobs(scheduler, jobs) == ["a0", "b3", "a1", "b4", "a2", "b5"]


def test_a_cheap_client_gets_turns_in_proportion_to_its_costs() -> None:
    scheduler = FairScheduler(
        workers=1, max_pending=100, max_in_flight_per_client=100, heavy_cost=1e9
    )
    jobs = [("big", 4.0)] * 3 + [("small", 1.0)] * 16
    ran = run_jobs(scheduler, jobs)
    # Four units of work each in turn: big's jobs end at 4, 8 and 12 on the virtual clock,
    # small's at 1, 2, 3, ...; equal ends go to the earlier arrival.
    assert ran.index("big1") == 8 and ran.index("big2") == 13


@pytest.mark.parametrize("workers", [1, 2])
def test_a_light_job_never_waits_for_heavy_ones_to_finish(workers: int) -> None:
    scheduler = FairScheduler(
        workers=workers, max_pending=100, max_in_flight_per_client=100, heavy_cost=4.0
    )
    heavy = [(f"g{number}", 36.0) for number in range(workers + 2)]
    ran = run_jobs(scheduler, [*heavy, ("light", 0.5)])
    # The heavy jobs fill the workers; the light one runs beside them, before the rest start.
    light = f"light{len(heavy)}"
    assert ran.index(light) < ran.index(f"g{workers}{workers}")


def test_too_many_in_flight_from_one_client_is_429_and_too_many_waiting_is_503() -> None:
    async def main() -> tuple[int, int]:
        scheduler = FairScheduler(
            workers=1, max_pending=3, max_in_flight_per_client=2, heavy_cost=1e9
        )
        release = threading.Event()
        held = [
            asyncio.create_task(scheduler.run(lambda: release.wait(30), client="a", cost=1))
            for _ in range(2)
        ]
        await asyncio.sleep(0.05)
        statuses = []
        for client in ("a", "b"):
            try:
                if client == "b":
                    for other in ("c", "d", "e"):
                        held.append(
                            asyncio.create_task(
                                scheduler.run(lambda: release.wait(30), client=other, cost=1)
                            )
                        )
                    await asyncio.sleep(0.05)
                await scheduler.run(lambda: None, client=client, cost=1)
                statuses.append(200)
            except ServiceError as error:
                statuses.append(error.status_code)
        release.set()
        await asyncio.gather(*held, return_exceptions=True)
        scheduler.close()
        return statuses[0], statuses[1]

    assert asyncio.run(main()) == (429, 503)


# --- a real server ------------------------------------------------------------------------------


def large_png(side: int = 6000) -> bytes:
    """A side x side PNG that compresses to a few hundred KB: cheap to send, dear to decode."""
    image = Image.new("RGB", (side, side), (236, 214, 226))
    draw = ImageDraw.Draw(image)
    for step in range(0, side, 250):
        draw.ellipse((step, step // 2, step + 400, step // 2 + 300), fill=(150, 60, 140))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fair_server(
    small_index: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    directory = tmp_path_factory.mktemp("fair")
    env = {"HISTOSEARCH_MAX_UPLOAD_BYTES": str(16 * 1024 * 1024)}
    server = LiveServer(small_index, directory / "server.log", env=env).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_an_ordinary_search_gets_through_while_greedy_clients_send_huge_uploads(
    fair_server: LiveServer,
) -> None:
    big = large_png()
    tile = samples.encode(samples.tile_rgb(4), "PNG")
    greedy_done: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()
    started = threading.Barrier(GREEDY_CLIENTS + 1)

    def greedy(number: int) -> None:
        transport = httpx.HTTPTransport(local_address=f"127.0.0.{number + 10}")
        with httpx.Client(base_url=fair_server.url, timeout=300, transport=transport) as client:
            for request in range(GREEDY_REQUESTS):
                if request == 1:
                    started.wait(timeout=300)
                response = client.post("/search", files={"image": ("big.png", big)})
                if response.status_code != 200:
                    failures.append(response.text)
                with lock:
                    greedy_done.append(number)

    threads = [threading.Thread(target=greedy, args=(n,)) for n in range(GREEDY_CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        # Every greedy client has finished one upload and is sending the next.
        started.wait(timeout=300)
        with httpx.Client(base_url=fair_server.url, timeout=300) as client:
            for _ in range(ORDINARY_SEARCHES):
                response = client.post("/search", files={"image": ("t.png", tile)})
                assert response.status_code == 200, response.text
        with lock:
            done_when_ordinary_finished = len(greedy_done)
    finally:
        for thread in threads:
            thread.join(timeout=600)
    assert not failures, failures[:2]
    assert len(greedy_done) == GREEDY_CLIENTS * GREEDY_REQUESTS
    # First come, first served would have put each ordinary search behind the greedy uploads
    # already waiting (about two each on two workers): ten or more would have finished first.
    # Fairly shared, the ordinary searches finish while fewer than two more uploads do.
    assert done_when_ordinary_finished < GREEDY_CLIENTS + 2

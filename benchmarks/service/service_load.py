"""Service load benchmark: a real `histosearch serve` process over a 10k-item archive.

    nice python -m benchmarks.service.service_load [--checkpoint model.pt] [--seconds 20]

The archive: the 240 Kather 2016 tiles and 740 of the LC25000 tiles are embedded with the model
(real codes from real tissue); the rest of the 10,000 items are copies of those codes with one or
two of their M sub-codes changed at random (search cost depends on the number of codes, not on
where they came from). Without ``--checkpoint`` the model is the default card with random weights:
timings do not depend on the weights.

Then, in this one run:
- the in-process cost of one query (decode + embed + search through the service's own engine,
  the same code the server runs), median over the query set, measured in passes that alternate
  with passes of the same queries over HTTP (one client), so that both see the same machine;
- the server (one process, its default thread pool) under 1, 4 and 16 closed-loop clients, each
  level for a bounded time, all on 127.0.0.1: /search throughput, p50/p95/p99 latency and errors;
- /health latency polled every 50 ms while 16 clients saturate /search.

Results: a table on stdout and ``benchmarks/results/service_load.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from benchmarks.common import REPO_ROOT, RESULTS, shared_data_root, write_result
from benchmarks.service.servers import free_port, launch_until_ready, percentile
from indexer.index.hashing import file_hash
from indexer.index.store import ArchiveIndex, NewItem
from indexer.index.thumbnails import make_thumbnail
from model import Embedder, ModelCard, build_model, load_checkpoint, save_checkpoint
from model.preprocess import open_upright_rgb
from service.app import load_engine
from service.engine import Upload
from service.settings import Settings

DATA = shared_data_root()
ARCHIVE_SIZE = 10_000
CLIENT_LEVELS = (1, 4, 16)
K = 10
EMBED_BATCH = 64


@dataclass(frozen=True)
class LevelResult:
    clients: int
    requests: int
    errors: int
    seconds: float
    throughput_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_ms_mean: float


def real_tiles() -> list[tuple[Path, str, str]]:
    """All 240 Kather tiles and every other LC25000 tile (740): 980 real codes."""
    tiles = []
    for name, step in (("kather2016-texture-240", 1), ("lc25000-lung-224px", 2)):
        rows = (DATA / name / "labels.csv").read_text().splitlines()[1:]
        for row in rows[::step]:
            path, label, group = row.split(",")
            tiles.append((DATA / name / path, label, group))
    return tiles


def load_or_build_model(checkpoint: Path | None, workdir: Path) -> Path:
    if checkpoint is not None:
        load_checkpoint(checkpoint)  # refuse a bad file before spending minutes on it
        return checkpoint
    torch.manual_seed(0)
    path = workdir / "random-default-card.pt"
    save_checkpoint(build_model(ModelCard()).eval(), path)
    return path


def build_archive(checkpoint: Path, directory: Path) -> int:
    """Real codes for every real tile, then perturbed copies up to ARCHIVE_SIZE items."""
    model = load_checkpoint(checkpoint).eval()
    embedder = Embedder(model, torch.device("cpu"), EMBED_BATCH)
    index = ArchiveIndex.create(directory, checkpoint)
    tiles = real_tiles()
    codes, items = [], []
    for start in range(0, len(tiles), EMBED_BATCH):
        batch = tiles[start : start + EMBED_BATCH]
        images = [open_upright_rgb(path) for path, _, _ in batch]
        descriptors = torch.from_numpy(embedder.embed(images))
        codes.append(model.codes_from_descriptors(descriptors).numpy())
        for (path, label, group), image in zip(batch, images, strict=True):
            items.append(
                NewItem(
                    source=str(path.relative_to(DATA)),
                    content_hash=file_hash(path.read_bytes()),
                    label=label,
                    group=group,
                    dataset=path.parent.parent.name,
                    source_size=image.size,
                    thumbnail=make_thumbnail(image),
                )
            )
    real_codes = np.concatenate(codes)
    index.add_codes(real_codes, items)
    rng = np.random.default_rng(0)
    extra = ARCHIVE_SIZE - len(index)  # byte-identical files were stored once
    picks = rng.integers(0, len(items), extra)
    copies = real_codes[picks].copy()
    card = model.card
    for row in copies:
        changed = rng.choice(card.num_codebooks, rng.integers(1, 3), replace=False)
        row[changed] = rng.integers(0, card.codebook_size, len(changed))
    copy_items = [
        NewItem(
            source=f"perturbed/{n}/{items[pick].source}",
            content_hash=f"perturbed-{n}",
            label=items[pick].label,
            group=f"perturbed-{items[pick].group}",
            dataset="perturbed",
            source_size=items[pick].source_size,
            thumbnail=items[pick].thumbnail,
        )
        for n, pick in enumerate(picks)
    ]
    index.add_codes(copies, copy_items)
    index.flush()
    total = len(index)
    index.close()
    return total


def build_archive_in_child(checkpoint: Path, index_dir: Path) -> int:
    """Build in a separate process: torch state left over from encoding 1,000 tiles in batches
    made later single queries in the same process measurably slower, which would skew the
    in-process baseline."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.service.service_load",
        "--checkpoint",
        str(checkpoint),
    ]
    subprocess.run([*command, "--build-into", str(index_dir)], check=True, cwd=REPO_ROOT)
    with ArchiveIndex.open(index_dir) as index:
        return len(index)


def query_bodies(count: int = 32) -> list[tuple[str, bytes]]:
    tiles = real_tiles()
    step = max(1, len(tiles) // count)
    return [(path.name, path.read_bytes()) for path, _, _ in tiles[::step][:count]]


def paired_single_query_ms(
    index_dir: Path, url: str, queries: list[tuple[str, bytes]], rounds: int = 3
) -> tuple[float, float]:
    """Median in-process cost and median 1-client HTTP latency, measured in alternating passes.

    In-process: decode + embed + search through the service's own engine (no HTTP). Alternating
    the two over the same queries cancels drift from whatever else the machine is doing.
    """
    engine = load_engine(Settings(index_dir=index_dir, device="cpu"))
    direct: list[float] = []
    served: list[float] = []

    def timed_direct(name: str, data: bytes) -> float:
        start = time.perf_counter()
        engine.search_upload(Upload(name, data), K, None)
        return (time.perf_counter() - start) * 1000

    # A worker thread, as in the server: on this machine torch runs measurably slower when
    # called from the main thread, which would flatter the ratio.
    worker = ThreadPoolExecutor(max_workers=1)
    try:
        with httpx.Client(base_url=url, timeout=120) as session:
            for name, data in queries[:4]:  # warm-up both paths
                worker.submit(timed_direct, name, data).result()
                session.post("/search", files={"image": (name, data)}, data={"k": str(K)})
            for _ in range(rounds):
                for name, data in queries:
                    direct.append(worker.submit(timed_direct, name, data).result())
                for name, data in queries:
                    start = time.perf_counter()
                    response = session.post(
                        "/search", files={"image": (name, data)}, data={"k": str(K)}
                    )
                    response.raise_for_status()
                    served.append((time.perf_counter() - start) * 1000)
    finally:
        worker.shutdown()
        engine.close()
    return statistics.median(direct), statistics.median(served)


def start_server(index_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "HISTOSEARCH_DEVICE": "cpu", "HISTOSEARCH_LOG_LEVEL": "WARNING"}
    command = [
        sys.executable,
        "-c",
        "from indexer.cli import main; raise SystemExit(main())",
        "serve",
        "--index",
        str(index_dir),
        "--port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    log.unlink(missing_ok=True)
    return launch_until_ready(command, env, log, url), url


def run_level(
    url: str, clients: int, queries: list[tuple[str, bytes]], seconds: float, poll: bool
) -> tuple[LevelResult, list[float]]:
    """``clients`` closed-loop clients for ``seconds``; with ``poll``, /health is polled every
    50 ms meanwhile (only at the top level: at lower levels the polls would be part of the load)."""
    latencies: list[float] = []
    server_side: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as session:
            n = offset
            while time.monotonic() < stop_at:
                name, data = queries[n % len(queries)]
                start = time.perf_counter()
                worked: float | None = None
                try:
                    response = session.post(
                        "/search", files={"image": (name, data)}, data={"k": str(K)}
                    )
                    if response.is_success:
                        worked = float(response.json()["timings"]["total_ms"])
                except httpx.HTTPError:
                    pass
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    latencies.append(elapsed)
                    if worked is None:
                        errors[0] += 1
                    else:
                        server_side.append(worked)
                n += clients

    health: list[float] = []
    stop_health = threading.Event()

    def poll_health() -> None:
        with httpx.Client(base_url=url, timeout=30) as session:
            while not stop_health.is_set():
                start = time.perf_counter()
                if session.get("/health").is_success:
                    health.append((time.perf_counter() - start) * 1000)
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    poller = threading.Thread(target=poll_health)
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    if poll:
        poller.start()
    for thread in threads:
        thread.join()
    stop_health.set()
    if poll:
        poller.join()
    elapsed = time.perf_counter() - started
    result = LevelResult(
        clients=clients,
        requests=len(latencies),
        errors=errors[0],
        seconds=round(elapsed, 2),
        throughput_per_s=round(len(latencies) / elapsed, 2),
        p50_ms=round(percentile(latencies, 50), 1),
        p95_ms=round(percentile(latencies, 95), 1),
        p99_ms=round(percentile(latencies, 99), 1),
        server_ms_mean=round(statistics.fmean(server_side), 1) if server_side else float("nan"),
    )
    return result, health


def print_table(levels: list[LevelResult], in_process: float, health: list[float]) -> None:
    # "work ms": the server's own decode + embed + search time per request (from its response).
    print(
        f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50 ms':>8} "
        f"{'p95 ms':>8} {'p99 ms':>8} {'work ms':>8}"
    )
    for level in levels:
        print(
            f"{level.clients:>7} {level.requests:>8} {level.errors:>6} "
            f"{level.throughput_per_s:>7.2f} {level.p50_ms:>8.1f} {level.p95_ms:>8.1f} "
            f"{level.p99_ms:>8.1f} {level.server_ms_mean:>8.1f}"
        )
    ratio = levels[0].p50_ms / in_process
    print(
        f"in-process decode+embed+search median: {in_process:.1f} ms; "
        f"sustained 1-client p50 / in-process = {ratio:.2f} (target <= 1.3)"
    )
    print(
        f"/health while 16 clients search: p50 {percentile(health, 50):.1f} ms, "
        f"p99 {percentile(health, 99):.1f} ms over {len(health)} polls (target p99 < 50)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--checkpoint", type=Path, help="model to embed with (default: random)")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each level")
    parser.add_argument("--build-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_into is not None:
        build_archive(args.checkpoint, args.build_into)
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="service-load-") as scratch:
        workdir = Path(scratch)
        checkpoint = load_or_build_model(args.checkpoint, workdir)
        index_dir = workdir / "index"
        started = time.perf_counter()
        items = build_archive_in_child(checkpoint, index_dir)
        print(f"archive: {items} items built in {time.perf_counter() - started:.0f} s")
        queries = query_bodies()
        process, url = start_server(index_dir, workdir / "server.log")
        try:
            in_process, paired_http = paired_single_query_ms(index_dir, url, queries)
            levels: list[LevelResult] = []
            health: list[float] = []
            for clients in CLIENT_LEVELS:
                level, health = run_level(
                    url, clients, queries, args.seconds, poll=clients == max(CLIENT_LEVELS)
                )
                levels.append(level)
        finally:
            process.terminate()
            process.wait(timeout=60)
    card = load_checkpoint(checkpoint).card if args.checkpoint else ModelCard()
    print_table(levels, in_process, health)
    print(
        f"paired passes: in-process median {in_process:.1f} ms, HTTP median {paired_http:.1f} ms "
        f"(ratio {paired_http / in_process:.2f}, target <= 1.3)"
    )
    report: dict[str, Any] = {
        "archive_items": items,
        "model_card": {
            key: card.model_dump()[key] for key in ("backbone", "input_size", "num_codebooks")
        },
        "bits": card.bits,
        "k": K,
        "seconds_per_level": args.seconds,
        "in_process_median_ms": round(in_process, 2),
        "paired_http_median_ms": round(paired_http, 2),
        "one_client_p50_over_in_process": round(levels[0].p50_ms / in_process, 3),
        "paired_http_over_in_process": round(paired_http / in_process, 3),
        "levels": [asdict(level) for level in levels],
        "health_under_16_clients": {
            "polls": len(health),
            "p50_ms": round(percentile(health, 50), 2),
            "p99_ms": round(percentile(health, 99), 2),
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    write_result(RESULTS / "service_load.json", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

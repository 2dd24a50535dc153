"""Hardening benchmark: stalled clients, greedy clients and the API contract, against a real server.

    nice python -m benchmarks.service.service_hardening [--stalled 2000] [--greedy 8] \
        [--searches 40]

All traffic goes to 127.0.0.1 (from several loopback source addresses, as distinct clients).
Over the 240 Kather 2016 tiles indexed with a random-weights default model (timings do not
depend on the weights), in one run:

1. ``--stalled`` connections each send half a request and stop. While they are open, /health is
   probed with a fresh connection each time (as a load balancer would): p50/p99. Then the time
   from the last stalled connection opened until the server has closed all of them. The same on
   plain uvicorn (``uvicorn --factory service.app:create_app``, no deadlines) for comparison,
   waiting at most ``--baseline-wait`` seconds.
2. A tile-sized search from one client, p50 over ``--searches`` requests, idle and then while
   ``--greedy`` other clients send uploads at the pixel limit (a 6300 x 6300 PNG, 39.7 MP, of a
   few hundred KB) back to back.
3. schemathesis with every check against the server (tests/service/schemathesis.toml): failures.

Targets: /health p99 < 100 ms under the stalled connections; all closed within 30 s; the ninth
client's p50 within 3x of idle; 0 schemathesis failures.

Results: a table on stdout and ``benchmarks/results/service_hardening.json``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from PIL import Image, ImageDraw

from benchmarks.common import REPO_ROOT, RESULTS, shared_data_root, write_result
from benchmarks.service.servers import free_port, launch_until_ready, percentile
from indexer.index.hashing import file_hash
from indexer.index.store import ArchiveIndex, NewItem
from indexer.index.thumbnails import make_thumbnail
from model import Embedder, ModelCard, build_model, save_checkpoint

KATHER = shared_data_root() / "kather2016-texture-240"
CONTRACT_CONFIG = REPO_ROOT / "tests" / "service" / "schemathesis.toml"
API_KEY = "benchmark-key-0123456789abcdef"
PIXEL_LIMIT_SIDE = 6300  # 39.69 MP, under the default 40 MP limit
STALLED_PER_ADDRESS = 100  # under the default per-address cap of 256
HEALTH_PROBES = 200


def build_index(directory: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelCard()).eval()
    checkpoint = directory / "model.pt"
    save_checkpoint(model, checkpoint)
    index_dir = directory / "index"
    rows = (KATHER / "labels.csv").read_text().splitlines()[1:]
    images, items = [], []
    for row in rows:
        path, label, group = row.split(",")
        data = (KATHER / path).read_bytes()
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")
        images.append(image)
        items.append(
            NewItem(
                source=path,
                content_hash=file_hash(data),
                label=label,
                group=group,
                thumbnail=make_thumbnail(image),
            )
        )
    with ArchiveIndex.create(index_dir, checkpoint) as index:
        index.add(Embedder(model, torch.device("cpu")).embed(images), items)
        index.flush()
    return index_dir


def start_server(index_dir: Path, log: Path, *, plain_uvicorn: bool = False) -> tuple[Any, str]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HISTOSEARCH_INDEX_DIR": str(index_dir),
        "HISTOSEARCH_API_KEY": API_KEY,
        "HISTOSEARCH_DEVICE": "cpu",
    }
    if plain_uvicorn:
        command = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    else:
        command = [sys.executable, "-c", "from indexer.cli import main; raise SystemExit(main())"]
        command += ["serve", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    return launch_until_ready(command, env, log, url), url


def stop_server(process: Any) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def open_stalled(port: int, count: int) -> list[socket.socket]:
    connections = []
    for number in range(count):
        address = f"127.0.2.{number // STALLED_PER_ADDRESS + 1}"
        connection = socket.socket()
        connection.bind((address, 0))
        connection.connect(("127.0.0.1", port))
        connection.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\n")
        connections.append(connection)
    return connections


def probe_health(port: int) -> list[float]:
    """/health over a fresh connection each time, as a load balancer probes: milliseconds from
    connecting to the end of the answer (raw sockets: a client library's own set-up is not the
    server's time)."""
    times = []
    for _ in range(HEALTH_PROBES):
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as probe:
            probe.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := probe.recv(65536):
                answer += chunk
        times.append((time.perf_counter() - start) * 1000)
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"/health answered {answer[:80]!r}")
    return times


def seconds_until_closed(connections: list[socket.socket], give_up_s: float) -> tuple[float, int]:
    """Seconds until the server closed every connection; and how many were still open then."""
    start = time.monotonic()
    watcher = selectors.DefaultSelector()  # epoll: select() stops at 1024 descriptors
    for connection in connections:
        connection.setblocking(False)
        watcher.register(connection, selectors.EVENT_READ)
    still_open = len(connections)
    while still_open and time.monotonic() - start < give_up_s:
        for key, _ in watcher.select(timeout=0.5):
            ready: Any = key.fileobj
            try:
                closed = ready.recv(65536) == b""
            except ConnectionResetError:
                closed = True
            except BlockingIOError:
                closed = False
            if closed:
                watcher.unregister(ready)
                still_open -= 1
    watcher.close()
    return time.monotonic() - start, still_open


def stalled_run(
    index_dir: Path, workdir: Path, count: int, plain: bool, wait: float
) -> dict[str, Any]:
    process, url = start_server(index_dir, workdir / f"stalled-{plain}.log", plain_uvicorn=plain)
    port = int(url.rsplit(":", 1)[1])
    connections: list[socket.socket] = []
    try:
        connections = open_stalled(port, count)
        opened = time.monotonic()
        try:
            health = probe_health(port)
            health_error = None
        except (OSError, RuntimeError) as error:
            health, health_error = [], repr(error)
        probing_s = time.monotonic() - opened
        closed_after, still_open = seconds_until_closed(connections, wait)
        # From the last stalled connection opened, probes included.
        closed_after += probing_s
    finally:
        for connection in connections:
            connection.close()
        stop_server(process)
    return {
        "server": "plain uvicorn" if plain else "histosearch serve",
        "stalled": count,
        "health_p50_ms": round(percentile(health, 50), 2) if health else None,
        "health_p99_ms": round(percentile(health, 99), 2) if health else None,
        "health_error": health_error,
        "seconds_until_all_closed": None if still_open else round(closed_after, 2),
        "still_open_after_wait": still_open,
        "waited_s": wait,
    }


def pixel_limit_png() -> bytes:
    image = Image.new("RGB", (PIXEL_LIMIT_SIDE, PIXEL_LIMIT_SIDE), (236, 214, 226))
    draw = ImageDraw.Draw(image)
    for step in range(0, PIXEL_LIMIT_SIDE, 250):
        draw.ellipse((step, step // 2, step + 400, step // 2 + 300), fill=(150, 60, 140))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def search_p50(url: str, tile: bytes, searches: int) -> float:
    times = []
    with httpx.Client(base_url=url, timeout=300) as client:
        client.post("/search", files={"image": ("t.png", tile)})  # warm
        for _ in range(searches):
            start = time.perf_counter()
            response = client.post("/search", files={"image": ("t.png", tile)})
            times.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, response.text
    return statistics.median(times)


def fairness_run(index_dir: Path, workdir: Path, greedy: int, searches: int) -> dict[str, Any]:
    big = pixel_limit_png()
    first_tile = (KATHER / "labels.csv").read_text().splitlines()[1].split(",")[0]
    with Image.open(KATHER / first_tile) as opened:
        buffer = io.BytesIO()
        opened.convert("RGB").save(buffer, format="PNG")
    tile = buffer.getvalue()
    process, url = start_server(index_dir, workdir / "fairness.log")
    stop = threading.Event()
    greedy_done = [0]
    greedy_errors: list[str] = []

    def greedy_client(number: int) -> None:
        transport = httpx.HTTPTransport(local_address=f"127.0.3.{number + 1}")
        with httpx.Client(base_url=url, timeout=600, transport=transport) as client:
            while not stop.is_set():
                response = client.post("/search", files={"image": ("big.png", big)})
                if response.status_code != 200:
                    greedy_errors.append(response.text[:200])
                greedy_done[0] += 1

    try:
        idle = search_p50(url, tile, searches)
        threads = [threading.Thread(target=greedy_client, args=(n,)) for n in range(greedy)]
        for thread in threads:
            thread.start()
        time.sleep(3.0)  # every greedy client has uploads in flight
        loaded_start = time.perf_counter()
        done_before = greedy_done[0]
        loaded = search_p50(url, tile, searches)
        loaded_seconds = time.perf_counter() - loaded_start
        greedy_rate = (greedy_done[0] - done_before) / loaded_seconds
        stop.set()
        for thread in threads:
            thread.join(timeout=600)
    finally:
        stop.set()
        stop_server(process)
    return {
        "greedy_clients": greedy,
        "upload_bytes": len(big),
        "upload_pixels": PIXEL_LIMIT_SIDE * PIXEL_LIMIT_SIDE,
        "searches": searches,
        "idle_p50_ms": round(idle, 2),
        "loaded_p50_ms": round(loaded, 2),
        "ratio": round(loaded / idle, 2),
        "greedy_uploads_per_s_meanwhile": round(greedy_rate, 2),
        "greedy_errors": len(greedy_errors),
    }


def contract_run(index_dir: Path, workdir: Path) -> dict[str, Any]:
    copy = workdir / "contract-index"
    shutil.copytree(index_dir, copy)
    process, url = start_server(copy, workdir / "contract.log")
    try:
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "--config-file",
                str(CONTRACT_CONFIG),
                "run",
                f"{url}/openapi.json",
                "--max-examples",
                "50",
                "--header",
                f"Authorization: Bearer {API_KEY}",
                "--no-color",
            ],
            cwd=workdir,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        stop_server(process)
    summary = [line.strip() for line in result.stdout.splitlines() if "generated" in line]
    failures = 0
    for line in result.stdout.splitlines():
        if line.strip().startswith("❌") and ":" in line and "ST" in line:
            failures += int(line.rsplit(":", 1)[1].strip() or 0)
    return {"exit_code": result.returncode, "failures": failures, "summary": summary[-1:]}


def print_table(results: dict[str, Any]) -> None:
    print("\n| measure | target | measured |\n|---|---|---|")
    for run in results["stalled"]:
        name = f"{run['stalled']} stalled connections, {run['server']}"
        closed = run["seconds_until_all_closed"]
        closed_text = (
            f"{closed} s"
            if closed is not None
            else (f"{run['still_open_after_wait']} still open after {run['waited_s']:g} s")
        )
        print(
            f"| {name}: /health p99 | < 100 ms | {run['health_p99_ms']} ms "
            f"(p50 {run['health_p50_ms']}) |"
        )
        print(f"| {name}: all closed | <= 30 s | {closed_text} |")
    fair = results["fairness"]
    print(
        f"| tile search p50 with {fair['greedy_clients']} clients uploading "
        f"{fair['upload_pixels'] / 1e6:.1f} MP PNGs vs idle | <= 3x | "
        f"{fair['loaded_p50_ms']} ms vs {fair['idle_p50_ms']} ms: {fair['ratio']}x |"
    )
    contract = results["contract"]
    print(
        f"| schemathesis failures (every check) | 0 | {contract['failures']} "
        f"(exit {contract['exit_code']}) |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stalled", type=int, default=2000)
    parser.add_argument("--greedy", type=int, default=8)
    parser.add_argument("--searches", type=int, default=40)
    parser.add_argument("--baseline-wait", type=float, default=30.0)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--output", type=Path, default=RESULTS / "service_hardening.json", help="results JSON"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="histosearch-hardening-") as scratch:
        workdir = Path(scratch)
        index_dir = build_index(workdir)
        stalled = [stalled_run(index_dir, workdir, args.stalled, False, 60.0)]
        if not args.no_baseline:
            stalled.append(stalled_run(index_dir, workdir, args.stalled, True, args.baseline_wait))
        results = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "stalled": stalled,
            "fairness": fairness_run(index_dir, workdir, args.greedy, args.searches),
            "contract": contract_run(index_dir, workdir),
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.output, results)
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

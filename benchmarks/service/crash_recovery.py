"""Crash-recovery benchmark: SIGKILL a real `histosearch serve` at random moments, many times.

    nice python -m benchmarks.service.crash_recovery [--kills 50] [--seed 0]

The index: the 240 Kather 2016 tiles embedded by a small randomly initialised SPQ model (the
test suite's index). The server runs with a snapshot after every change
(``HISTOSEARCH_SNAPSHOT_EVERY_CHANGES=1``), so kills often land while a snapshot is being written.
One client streams adds (unique images) and deletes (of items it added) until a random moment
(0.2-2 s after the stream starts), then the server is SIGKILLed and restarted on the same
directory, and the restart is checked: every acknowledged add of the last cycle (and 10 older
ones) is found by a search restricted to its own label, every acknowledged delete of the last
cycle (and 10 older ones) is 404, and /stats agrees with SQLite and with the ledger of
acknowledged changes. See tests/service/crash_cycles.py.

A restart that fails ends the series (its error is in the JSON). Results: a table on stdout and
``benchmarks/results/crash_recovery.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import RESULTS, write_result
from support.crash_cycles import CycleOutcome, run_crash_cycles
from support.small_index import build_small_index


def summary(outcomes: list[CycleOutcome], kills: int, seconds: float) -> dict[str, object]:
    restarted = [outcome for outcome in outcomes if outcome.restarted]
    return {
        "kills": kills,
        "restarts_that_opened": len(restarted),
        "acknowledged_adds": sum(outcome.adds_acknowledged for outcome in outcomes),
        "acknowledged_deletes": sum(outcome.deletes_acknowledged for outcome in outcomes),
        "adds_checked": sum(outcome.adds_checked for outcome in outcomes),
        "deletes_checked": sum(outcome.deletes_checked for outcome in outcomes),
        "acknowledged_adds_lost": sum(len(outcome.adds_lost) for outcome in outcomes),
        "acknowledged_deletes_back": sum(len(outcome.deletes_back) for outcome in outcomes),
        "restarts_with_stats_right": sum(outcome.stats_right for outcome in restarted),
        "kills_during_a_snapshot": sum(bool(outcome.leftovers) for outcome in outcomes),
        "restarts_that_rebuilt_from_sqlite": sum(outcome.rebuilt for outcome in restarted),
        "final_items": outcomes[-1].expected_items if outcomes else None,
        "seconds": round(seconds, 1),
    }


def print_table(figures: dict[str, object], attempted: int) -> None:
    kills = figures["kills"]
    stopped = "" if attempted == kills else f" (stopped at restart {attempted}, which failed)"
    rows = [
        ("restarts that opened", f"{figures['restarts_that_opened']} of {kills}{stopped}"),
        (
            "acknowledged adds (checked)",
            f"{figures['acknowledged_adds']} ({figures['adds_checked']})",
        ),
        (
            "acknowledged deletes (checked)",
            f"{figures['acknowledged_deletes']} ({figures['deletes_checked']})",
        ),
        ("acknowledged adds lost", str(figures["acknowledged_adds_lost"])),
        ("acknowledged deletes back", str(figures["acknowledged_deletes_back"])),
        ("restarts with /stats right", f"{figures['restarts_with_stats_right']} of {kills}"),
        ("kills during a snapshot", f"{figures['kills_during_a_snapshot']} of {kills}"),
        ("restarts rebuilt from SQLite", str(figures["restarts_that_rebuilt_from_sqlite"])),
        ("items at the end", str(figures["final_items"])),
        ("seconds", str(figures["seconds"])),
    ]
    print(f"{kills} SIGKILLs at random moments with a snapshot after every change")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "crash_recovery.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crash-recovery-") as scratch:
        workdir = Path(scratch)
        index_dir = build_small_index(workdir / "index")
        started = time.perf_counter()
        outcomes = run_crash_cycles(index_dir, workdir, kills=args.kills, seed=args.seed)
        figures = summary(outcomes, args.kills, time.perf_counter() - started)
    print_table(figures, len(outcomes))
    write_result(
        args.out,
        {"figures": figures, "cycles": [asdict(outcome) for outcome in outcomes]},
    )
    print(f"wrote {args.out}")
    clean = all(outcome.clean for outcome in outcomes) and len(outcomes) == args.kills
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())

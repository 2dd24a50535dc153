"""Rebuilds demo/archive from the Kather 2016 texture tiles (CC BY 4.0).

The 240 tiles (8 classes x 30) are re-encoded as JPEG (quality 90) so the whole demo archive stays
under 2 MB in git; nothing else changes (same 150x150 pixels, same names, same labels and groups).

    python scripts/make_demo_archive.py ../shared/data/kather2016-texture-240 demo/archive
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

from PIL import Image

JPEG_QUALITY = 90


def convert(source_root: Path, target_root: Path) -> int:
    rows = list(csv.DictReader((source_root / "labels.csv").open()))
    if target_root.exists():
        shutil.rmtree(target_root)
    target_root.mkdir(parents=True)
    out_rows = []
    for row in rows:
        relative = Path(row["path"]).with_suffix(".jpg")
        destination = target_root / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source_root / row["path"]) as image:
            image.convert("RGB").save(destination, "JPEG", quality=JPEG_QUALITY)
        out_rows.append({"path": relative.as_posix(), "label": row["label"], "group": row["group"]})
    with (target_root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "group"])
        writer.writeheader()
        writer.writerows(out_rows)
    return len(out_rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("source", type=Path, help="the kather2016-texture-240 folder")
    parser.add_argument("target", type=Path, help="where to write the demo archive")
    args = parser.parse_args()
    count = convert(args.source, args.target)
    print(f"wrote {count} tiles to {args.target}")  # noqa: T201


if __name__ == "__main__":
    main()

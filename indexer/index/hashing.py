"""Content hashes that identify files and tiles, so duplicates are recognised however they arrive.

A file indexed from disk and the same bytes uploaded hash alike; a tile's hash is its file's plus
its place in the image, so the same tile of the same file is one item whoever adds it.
"""

from __future__ import annotations

import hashlib

from indexer.index.records import TileBox


def file_hash(data: bytes) -> str:
    """SHA-256 of a file's bytes, hex."""
    return hashlib.sha256(data).hexdigest()


def tile_hash(file_hash: str, box: TileBox) -> str:
    """Content hash of a tile: the file's bytes plus the tile's place in the image."""
    return f"{file_hash}:{box[0]},{box[1]},{box[2]},{box[3]}"

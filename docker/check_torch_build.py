"""Image build step: says which torch build pip installed, and stops the build when it is not the
one asked for (TORCH_BUILD: cpu or cuda).

Where the CPU wheel index cannot be reached, pip quietly takes PyPI's CUDA build instead: 4.3 GB
of CUDA libraries in an image meant to be about 2 GB. This turns that into a clear choice.
Usage: python check_torch_build.py WANTED [TORCH_INDEX_URL]
"""

from __future__ import annotations

import sys

BUILDS = ("cpu", "cuda")


def installed_build() -> tuple[str, str]:
    """('cpu' or 'cuda', a description) of the torch this interpreter imports."""
    import torch

    cuda = torch.version.cuda
    if cuda is None:
        return "cpu", f"torch {torch.__version__}, the CPU build"
    return "cuda", f"torch {torch.__version__}, a CUDA {cuda} build"


def main(argv: list[str]) -> int:
    wanted = argv[1] if len(argv) > 1 else "cpu"
    index = argv[2] if len(argv) > 2 else ""
    if wanted not in BUILDS:
        sys.stderr.write(f"TORCH_BUILD={wanted!r}: expected one of {', '.join(BUILDS)}\n")
        return 2
    build, description = installed_build()
    sys.stdout.write(f"check_torch_build: installed {description} (TORCH_BUILD={wanted})\n")
    if build == wanted:
        return 0
    where = (
        f"with the CPU wheel index {index!r} (unreachable, or without this version: PyPI's"
        " build came instead)"
        if index
        else "from PyPI alone (TORCH_INDEX_URL='')"
    )
    remedy = (
        "TORCH_INDEX_URL=<an index or mirror that serves the CPU wheels>"
        if wanted == "cpu"
        else "TORCH_INDEX_URL='' (PyPI's torch is the CUDA build)"
    )
    sys.stderr.write(
        f"check_torch_build: TORCH_BUILD={wanted} asks for the {wanted} build of torch, but pip"
        f" installed {description} {where}. Build with --build-arg {remedy}, or with"
        f" --build-arg TORCH_BUILD={build} to keep this build (compose passes both from the"
        " environment or .env).\n"
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

#!/usr/bin/env bash
# Entry point of the compose `ray` profile: join this container to the Ray cluster, then run the
# `histosearch` verb given (with --ray auto it drives the cluster it just joined).
#   RAY_HEAD_ADDRESS unset  - start the head node and keep it up
#   RAY_HEAD_ADDRESS=host:port and no arguments - a worker node: join and keep it up
#   RAY_HEAD_ADDRESS=host:port and arguments    - join, then `histosearch <arguments>`
# Ray keeps objects in /dev/shm: give the containers shm_size (compose does), Docker's 64 MB is too
# little for batches of tiles. Its object store is sized to fit there (RAY_OBJECT_STORE_BYTES,
# default 80% of /dev/shm): Ray's own default, 30% of the host's memory, is larger than a 2 GB
# /dev/shm on a 24 GB host, and Ray then falls back to /tmp, on disk, warning that this is slow.
set -euo pipefail

: "${RAY_NODE_CPUS:=$(nproc)}"
: "${RAY_OBJECT_STORE_BYTES:=$(($(df -B1 --output=size /dev/shm | tail -n 1) * 4 / 5))}"
options=(--num-cpus "$RAY_NODE_CPUS" --object-store-memory "$RAY_OBJECT_STORE_BYTES"
    --disable-usage-stats)
if [ -z "${RAY_HEAD_ADDRESS:-}" ]; then
    exec ray start --head --port 6379 --include-dashboard false "${options[@]}" --block
fi
if [ "$#" -eq 0 ]; then
    exec ray start --address "$RAY_HEAD_ADDRESS" "${options[@]}" --block
fi
ray start --address "$RAY_HEAD_ADDRESS" "${options[@]}"
exec histosearch "$@"

#!/usr/bin/env bash
# Entry point of the histosearch images, and of the compose services:
#   index  - train a model if none exists in $HISTOSEARCH_WORKDIR, then build or extend the index
#            of $HISTOSEARCH_ARCHIVE (resumable: finished images are not encoded twice)
#   serve  - serve the API and the web page from $HISTOSEARCH_INDEX_DIR on $HISTOSEARCH_PORT
#   other  - passed to the `histosearch` command line as it is (e.g. `stats --index /data/index`)
# The tests run this very script on the host, with the same variables, since no Docker engine runs there.
set -euo pipefail

: "${HISTOSEARCH_WORKDIR:=/data}"
: "${HISTOSEARCH_ARCHIVE:=/app/demo/archive}"
: "${HISTOSEARCH_INDEX_DIR:=${HISTOSEARCH_WORKDIR}/index}"
: "${HISTOSEARCH_HOST:=0.0.0.0}"
: "${HISTOSEARCH_PORT:=8000}"
: "${HISTOSEARCH_TRAIN_MINUTES:=5}"
export HISTOSEARCH_INDEX_DIR

command=${1:-serve}
case "$command" in
    index)
        shift
        exec histosearch prepare \
            --archive "$HISTOSEARCH_ARCHIVE" \
            --workdir "$HISTOSEARCH_WORKDIR" \
            --index "$HISTOSEARCH_INDEX_DIR" \
            --train-minutes "$HISTOSEARCH_TRAIN_MINUTES" "$@"
        ;;
    serve)
        shift
        exec histosearch serve \
            --index "$HISTOSEARCH_INDEX_DIR" \
            --host "$HISTOSEARCH_HOST" \
            --port "$HISTOSEARCH_PORT" "$@"
        ;;
    *)
        exec histosearch "$@"
        ;;
esac

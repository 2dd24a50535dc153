#!/usr/bin/env bash
# Entry point of the histosearch images, and of the compose services:
#   index  - train a model if none exists in $HISTOSEARCH_WORKDIR, then build or extend the index
#            of $HISTOSEARCH_ARCHIVE (resumable: finished images are not encoded twice)
#   index-slides - add the whole-slide images under $HISTOSEARCH_SLIDES to the same index, with the
#            model the index job made ($HISTOSEARCH_SLIDE_MPP um/px, $HISTOSEARCH_SLIDE_TILE_SIZE px
#            tiles; resumable); an empty folder is nothing to do
#   serve  - serve the API and the web page from $HISTOSEARCH_INDEX_DIR on $HISTOSEARCH_PORT
#   other  - passed to the `histosearch` command line as it is (e.g. `stats --index /data/index`)
# tests/deploy/test_entrypoints.py runs this very script on the host, with the same variables (the quick
# check); tests/deploy/test_compose_up.py runs it in the containers of the real stack.
set -euo pipefail

: "${HISTOSEARCH_WORKDIR:=/data}"
: "${HISTOSEARCH_ARCHIVE:=/app/demo/archive}"
: "${HISTOSEARCH_INDEX_DIR:=${HISTOSEARCH_WORKDIR}/index}"
: "${HISTOSEARCH_HOST:=0.0.0.0}"
: "${HISTOSEARCH_PORT:=8000}"
: "${HISTOSEARCH_TRAIN_EPOCHS:=80}"
: "${HISTOSEARCH_TRAIN_MINUTES:=5}"
: "${HISTOSEARCH_SLIDES:=/slides}"
: "${HISTOSEARCH_SLIDE_MPP:=0.5}"
: "${HISTOSEARCH_SLIDE_TILE_SIZE:=224}"
export HISTOSEARCH_INDEX_DIR

command=${1:-serve}
case "$command" in
    index)
        shift
        exec histosearch prepare \
            --archive "$HISTOSEARCH_ARCHIVE" \
            --workdir "$HISTOSEARCH_WORKDIR" \
            --index "$HISTOSEARCH_INDEX_DIR" \
            --train-epochs "$HISTOSEARCH_TRAIN_EPOCHS" \
            --train-minutes "$HISTOSEARCH_TRAIN_MINUTES" "$@"
        ;;
    index-slides)
        shift
        if [ -z "$(find "$HISTOSEARCH_SLIDES" -type f ! -name 'README*' -print -quit 2>/dev/null)" ]; then
            echo "index-slides: no files under $HISTOSEARCH_SLIDES, no slides to index"
            exit 0
        fi
        exec histosearch index --source slides \
            --data "$HISTOSEARCH_SLIDES" \
            --checkpoint "$HISTOSEARCH_WORKDIR/model/model.pt" \
            --index "$HISTOSEARCH_INDEX_DIR" \
            --mpp "$HISTOSEARCH_SLIDE_MPP" \
            --tile-size "$HISTOSEARCH_SLIDE_TILE_SIZE" --no-progress "$@"
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

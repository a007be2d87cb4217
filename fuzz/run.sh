#!/usr/bin/env bash
# Build the libFuzzer harness with ASan + UBSan and fuzz the C decoder.
#
#   fuzz/run.sh [SECONDS] [extra libFuzzer flags...]     (default 600: a 10-minute run)
#   FUZZ_JOBS=2 fuzz/run.sh 600                            (parallel workers)
#   fuzz/run.sh build                                      (only build fuzz/build/fuzz_batch)
#
# New interesting inputs go to fuzz/build/corpus (a scratch copy); the committed
# seed corpus fuzz/corpus/ is only read.  A crash leaves crash-<sha1> in
# fuzz/build/; minimise it with `fuzz/build/fuzz_batch -minimize_crash=1 FILE`,
# fix csrc/, and commit the reproducer to fuzz/corpus/ as regress-<name>.bin.
# Needs clang with the libFuzzer runtime (Debian: apt-get install clang libclang-rt-14-dev).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=..
BUILD=build
CC=${CC:-clang}
mkdir -p "$BUILD" "$BUILD/corpus"

"$CC" -g -O1 -std=c11 -D_GNU_SOURCE -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$ROOT/csrc" fuzz_batch.c "$ROOT/csrc/batch.c" "$ROOT/csrc/crc32c.c" "$ROOT/csrc/dedup.c" \
    -o "$BUILD/fuzz_batch"

if [ "${1:-}" = build ]; then
    echo "built $BUILD/fuzz_batch"
    exit 0
fi
SECONDS_TO_RUN=${1:-600}
shift || true
JOBS=${FUZZ_JOBS:-1}
PARALLEL=()
if [ "$JOBS" -gt 1 ]; then
    # libFuzzer writes one fuzz-<n>.log per job into the working directory.
    PARALLEL=(-jobs="$JOBS" -workers="$JOBS")
    cd "$BUILD" && BUILD=. && ROOT=../.. && CORPUS=../corpus
fi
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
exec "$BUILD/fuzz_batch" "$BUILD/corpus" "${CORPUS:-corpus}" \
    -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix="$BUILD/" -print_final_stats=1 \
    "${PARALLEL[@]}" "$@"

#!/usr/bin/env bash
# Builds the libFuzzer target and fuzzes every parser for SECONDS (default 60) each.
# Crashes are written to FuzzTesting/Regressions/; existing ones are replayed first.
set -euo pipefail
cd "$(dirname "$0")/../FuzzTesting"
seconds=${1:-60}
swift build -c debug -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library --product pointsub-fuzz
bin=.build/debug/pointsub-fuzz
if compgen -G "Regressions/crash-*" > /dev/null; then "$bin" Regressions/crash-*; fi
corpus=$(mktemp -d)
for parser in 0 1 2 3 4 5 6 7; do
    mkdir -p "$corpus/$parser"
    printf "\\x$(printf %02x "$parser")" > "$corpus/$parser/seed"
    echo "== parser $parser for ${seconds}s"
    "$bin" "$corpus/$parser" -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 \
        -artifact_prefix=Regressions/ -print_final_stats=1 2>&1 | tail -3
done
rm -rf "$corpus"

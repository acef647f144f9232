#!/usr/bin/env bash
# Fuzzes every parser and state machine that reads network bytes (issue 10).
#
#   scripts/fuzz.sh [SECONDS] [TARGET…]
#
# Builds FuzzTesting/ with libFuzzer and AddressSanitizer, replays every input kept under
# FuzzTesting/Regressions/<target>/, then fuzzes each TARGET (default: all) for SECONDS (default
# 60) in libFuzzer's fork mode, which keeps going after a crash, OOM or timeout: every such input
# is written to FuzzTesting/Regressions/<target>/ (commit it: the test suite replays it through
# FuzzRegressionTests). Corpora grow in FuzzTesting/.corpus/<target>/ (gitignored) so that later
# runs build on them; FuzzTesting/Seeds/<target>/ holds the committed seeds they start from.
# Prints per target the executions, crashes (incl. OOMs and timeouts) and exec/s, then a total.
#
# Environment: FUZZ_JOBS (build jobs, default 1: the machine is shared), FUZZ_MAX_LEN (default 4096).
set -euo pipefail
cd "$(dirname "$0")/../FuzzTesting"
seconds=${1:-60}
shift || true
all_targets=(varint multibase multihash multiaddr protobuf keys secp256k1 identify peer-record multistream noise
    yamux-frames yamux-session pubsub-rpc pubsub-frames pointsub-parser pointsub-decompress
    tls-certificate websocket-frames websocket-upgrade)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

echo "== building (libFuzzer + AddressSanitizer, optimized)"
# Release: a debug build runs 5–20 times fewer inputs per second. -enable-testing and -DFUZZING
# let the targets that need internals (@testable import) build in release too.
build_log=$(mktemp)
if ! swift build -c release -j "${FUZZ_JOBS:-1}" -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library \
    -Xswiftc -enable-testing -Xswiftc -DFUZZING --product pointsub-fuzz > "$build_log" 2>&1; then
    grep -E "error" "$build_log" >&2 || tail -20 "$build_log" >&2
    echo "build failed" >&2
    exit 1
fi
rm -f "$build_log"
bin=.build/release/pointsub-fuzz

# Swift's runtime keeps metadata alive for the whole process; leak reports would be noise.
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
# Swift's own crash backtracer trips over ASan's shadow memory; ASan prints the stack instead.
export SWIFT_BACKTRACE=enable=no
options=(-max_len="${FUZZ_MAX_LEN:-4096}" -rss_limit_mb=2048 -malloc_limit_mb=256 -timeout=10 -detect_leaks=0)

echo "== replaying FuzzTesting/Regressions"
replay_failures=0
for target in "${targets[@]}"; do
    for file in Regressions/"$target"/*; do
        [ -f "$file" ] || continue
        if ! FUZZ_TARGET=$target "$bin" "${options[@]}" "$file" > /tmp/fuzz-replay.$$ 2>&1; then
            echo "FAILS: $file"; tail -20 /tmp/fuzz-replay.$$
            replay_failures=$((replay_failures + 1))
        fi
    done
done
rm -f /tmp/fuzz-replay.$$
echo "replay: $replay_failures failing input(s)"

total_execs=0
total_crashes=0
summary=()
for target in "${targets[@]}"; do
    mkdir -p ".corpus/$target" "Regressions/$target"
    seeds=()
    [ -d "Seeds/$target" ] && seeds=("Seeds/$target")
    before=$(ls "Regressions/$target" | wc -l)
    log=".corpus/$target.log"
    echo "== $target for ${seconds}s"
    FUZZ_TARGET=$target "$bin" ".corpus/$target" "${seeds[@]}" "${options[@]}" \
        -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
        -max_total_time="$seconds" -artifact_prefix="Regressions/$target/" -print_final_stats=1 \
        > "$log" 2>&1 || true
    # Fork mode's status lines: "#<execs>: cov: … exec/s: <n> oom/timeout/crash: <o>/<t>/<c> time: …".
    last=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1 || true)
    execs=$(sed -nE 's/^#([0-9]+):.*/\1/p' <<< "$last")
    rate=$(sed -nE 's/.*exec\/s: ([0-9]+).*/\1/p' <<< "$last")
    counts=$(sed -nE 's/.*oom\/timeout\/crash: ([0-9]+)\/([0-9]+)\/([0-9]+).*/\1 \2 \3/p' <<< "$last")
    read -r ooms timeouts crashes <<< "${counts:-0 0 0}"
    after=$(ls "Regressions/$target" | wc -l)
    found=$((ooms + timeouts + crashes))
    [ $((after - before)) -gt "$found" ] && found=$((after - before))
    execs=${execs:-0}
    total_execs=$((total_execs + execs))
    total_crashes=$((total_crashes + found))
    line=$(printf "%-20s %12s execs %8s exec/s %3s crashes (oom %s, timeout %s, crash %s)" \
        "$target" "$execs" "${rate:-0}" "$found" "$ooms" "$timeouts" "$crashes")
    echo "$line"
    summary+=("$line")
    if [ "$found" -gt 0 ]; then
        echo "   new inputs in FuzzTesting/Regressions/$target/; log: FuzzTesting/$log"
        grep -E "ERROR: AddressSanitizer|Fatal error|fuzz invariant failure" "$log" | sort | uniq -c | head -5 || true
    fi
done

echo "== summary ($(date -u +%Y-%m-%dT%H:%MZ), ${seconds}s per target)"
printf '%s\n' "${summary[@]}"
printf "%-20s %12s execs %3s crashes, %s failing regression input(s)\n" "total" "$total_execs" "$total_crashes" "$replay_failures"
[ "$total_crashes" -eq 0 ] && [ "$replay_failures" -eq 0 ]

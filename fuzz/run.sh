#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each (default 300) from the committed
# seeds, and prints libFuzzer's final statistics per target. Needs `cargo install cargo-fuzz`
# and a nightly toolchain. Crashing inputs land in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh                      # all five targets, 5 minutes each
#   SECONDS_EACH=60 fuzz/run.sh npy  # one target, one minute
set -euo pipefail
cd "$(dirname "$0")"
seconds="${SECONDS_EACH:-300}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(idx npy cifar10 checkpoint config)
cargo +nightly fuzz build -O >/dev/null 2>&1
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    log="$(mktemp)"
    status=0
    cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$seconds" -max_len=65536 \
        -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    corpus=$(ls "corpus/$t" | wc -l)
    if [ "$status" -eq 0 ]; then finding="none"; else finding="CRASH (exit $status, see fuzz/artifacts/$t)"; fi
    echo "$t: ${execs:-?} executions in ${seconds} s (${rate:-?}/s), ${cov:-cov: ?}, corpus $corpus, findings: $finding"
    [ "$status" -eq 0 ] || tail -40 "$log"
    rm -f "$log"
done

#!/bin/sh
# Runs every cargo-fuzz target for N seconds (default 30) from the committed seed corpus and
# fails on the first crash, leak or timeout. New inputs go to a scratch folder, not the tree.
#
#   fuzz/run-short.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept the sanitizer flags cargo fuzz passes. Crash inputs land in fuzz/artifacts/<target>/.
set -eu
cd "$(dirname "$0")/.."
secs=${1:-30}
[ $# -gt 0 ] && shift
targets=${*:-$(RUSTC_BOOTSTRAP=1 cargo fuzz list)}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
RUSTC_BOOTSTRAP=1 cargo fuzz build
status=0
for t in $targets; do
    mkdir -p "$scratch/$t"
    printf '%s: ' "$t"
    if RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 >"$scratch/$t.log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE' "$scratch/$t.log" | tail -1
    else
        echo "FAILED"
        tail -40 "$scratch/$t.log"
        status=1
    fi
done
exit $status

#!/usr/bin/env bash
# Builds every fuzz target under fuzz/ and runs each for SECONDS_PER_TARGET seconds (default 60).
# Prints one line per target with the runs executed, then `fuzz: N passed, M failed`; exits
# non-zero when any target crashed. See fuzz/README.md.
#
# Environment:
#   FUZZ_SANITIZER   address (default) or none. AddressSanitizer needs -Zsanitizer, which the
#                    stable compiler accepts under RUSTC_BOOTSTRAP=1 (set here); `none` builds
#                    with stable flags only.
#   FUZZ_TARGETS     space-separated subset of targets to run (default: all).
#   FUZZ_RSS_LIMIT_MB  libFuzzer's memory limit per target (default 4096).
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$root/fuzz"
sanitizer="${FUZZ_SANITIZER:-address}"
rss_limit="${FUZZ_RSS_LIMIT_MB:-4096}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

cd "$fuzz_dir"
targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"

echo "fuzz: building ($sanitizer sanitizer, debug assertions)"
cargo fuzz build --sanitizer "$sanitizer" --debug-assertions

logs="$fuzz_dir/target/fuzz-logs"
mkdir -p "$logs"
passed=0
failed=0
for target in $targets; do
    corpus="$fuzz_dir/corpus/$target"
    mkdir -p "$corpus"
    options=(
        "-max_total_time=$seconds"
        "-timeout=10"
        "-rss_limit_mb=$rss_limit"
        "-print_final_stats=1"
    )
    if [[ -f "$fuzz_dir/dict/$target.dict" ]]; then
        options+=("-dict=$fuzz_dir/dict/$target.dict")
    fi
    log="$logs/$target.log"
    status=0
    cargo fuzz run --sanitizer "$sanitizer" --debug-assertions "$target" "$corpus" \
        -- "${options[@]}" >"$log" 2>&1 || status=$?

    runs="$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
    runs="${runs:-$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)}"
    if [[ $status -eq 0 ]]; then
        passed=$((passed + 1))
        echo "fuzz: $target: ok, ${runs:-?} runs in ${seconds}s"
    else
        failed=$((failed + 1))
        artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
        echo "fuzz: $target: FAILED (exit $status), ${runs:-?} runs; artifact: ${artifact:-none}"
        grep -m 1 -A 3 -E "panicked at|ERROR: (libFuzzer|AddressSanitizer)" "$log" |
            sed 's/^/    /' || true
        echo "    full log: $log"
        if [[ -n "$artifact" ]]; then
            echo "    reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s $sanitizer -a" \
                "$target $artifact)"
        fi
    fi
done

echo "fuzz: $passed passed, $failed failed"
[[ $failed -eq 0 ]]

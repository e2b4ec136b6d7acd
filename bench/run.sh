#!/usr/bin/env bash
# The secmx load benchmark in one command, on a fresh Debian machine (as root, or with sudo):
#
#   bench/run.sh            full run: ceiling, secmx (by route and by discovery) and Postfix,
#                           results in bench/results/
#   bench/run.sh --smoke    seconds: every system once, exits non-zero only if something broke
#
# Installs Postfix unconfigured (its package brings smtp-source and smtp-sink), unbound (the
# DNS server of the secmx-dns rows), openssl and python3 when they are missing, builds secmx
# and secmx-load, then runs bench/bench.py with the remaining arguments (bench/bench.py
# --help lists them).
#   --no-install   do not touch packages
#   --no-build     use the binaries already in target/release
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
build=1
args=()
for arg in "$@"; do
    case "$arg" in
        --no-install) install=0 ;;
        --no-build) build=0 ;;
        *) args+=("$arg") ;;
    esac
done

if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi

if [ "$install" -eq 1 ]; then
    missing=()
    for tool in postfix:postfix smtp-source:postfix smtp-sink:postfix openssl:openssl \
        python3:python3 unbound:unbound; do
        command -v "${tool%%:*}" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" \
            command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        # Postfix is only a benchmark peer: installed with no configuration, never started
        # as the system's MTA.
        echo "postfix postfix/main_mailer_type select No configuration" \
            | "${sudo[@]}" debconf-set-selections
        "${sudo[@]}" apt-get update -qq
        # shellcheck disable=SC2046
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
            $(printf '%s\n' "${missing[@]}" | sort -u) ca-certificates >/dev/null
    fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

if [ "$build" -eq 1 ]; then
    cargo build --release --locked --bin secmx --bin secmx-load
fi

# The benchmark starts every process itself and stops each by pid when it ends; this trap
# only forwards an interrupt to it.
python3 bench/bench.py ${args[@]+"${args[@]}"} &
bench_pid=$!
trap 'kill -TERM "$bench_pid" 2>/dev/null || true' INT TERM HUP
status=0
wait "$bench_pid" || status=$?
# A signal interrupts the first wait; wait again for the benchmark's own clean-up.
if kill -0 "$bench_pid" 2>/dev/null; then wait "$bench_pid" || status=$?; fi
exit "$status"

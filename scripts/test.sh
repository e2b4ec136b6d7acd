#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, then runs every test.
# Needs root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
export DEBIAN_FRONTEND=noninteractive

# Postfix is only a test peer (smtp-sink) and a benchmark peer: install it unconfigured.
echo "postfix postfix/main_mailer_type select No configuration" | "${sudo[@]}" debconf-set-selections
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    unbound swaks libnet-ssleay-perl postfix python3 ca-certificates openssl >/dev/null

cargo test --release --locked

# The benchmark's smoke form: every system once, seconds, no thresholds; fails only if something
# broke (a system did not start, a client failed, a message was lost).
bench/run.sh --smoke --no-install

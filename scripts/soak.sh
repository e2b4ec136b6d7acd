#!/usr/bin/env bash
# Long soak of secmx: mixed plaintext/STARTTLS load with client hang-ups and a deferring
# receiver for SECONDS (default 1800), then the check that the Message-IDs acknowledged with
# 250 equal those delivered. Prints one `soak:` summary line.
#
# Usage: scripts/soak.sh [SECONDS]
# Needs what scripts/test.sh installs (python3 among it).
set -euo pipefail
cd "$(dirname "$0")/.."

export SECMX_SOAK_SECONDS="${1:-${SECMX_SOAK_SECONDS:-1800}}"
exec cargo test --release --test soak -- --nocapture

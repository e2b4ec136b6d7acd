#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, then runs every test: the Rust tests,
# the benchmark's smoke form, a short fuzz run and the appliance's build and boot test.
# Needs root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
else
    # The image build and boot test run as root; they keep this user's Rust toolchain.
    export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
    sudo=(sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME)
fi
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

# Every fuzz target briefly (scripts/fuzz.sh 600 or more is the long form; fuzz/README.md).
scripts/fuzz.sh 15

# The appliance: build the image, boot it under QEMU (UEFI and BIOS) and send it mail.
"${sudo[@]}" image/build.sh
"${sudo[@]}" image/boot-test.sh

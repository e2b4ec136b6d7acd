#!/usr/bin/env bash
# Boots the appliance image built by image/build.sh under QEMU and checks it end to end:
#
#   UEFI (OVMF) and BIOS (SeaBIOS), each with a config ISO (a local domain delivered to a
#   Maildir on the spool) and a blank spool disk:
#     boot 1: the spool is formatted, the 220 banner arrives, a message sent with STARTTLS is
#             accepted, ACPI power-off ends QEMU cleanly, the message is on the spool disk
#     boot 2: the spool is not formatted again (same filesystem), the banner arrives, the
#             message is still there after the second power-off
#   UEFI without config or spool disk, with a disk that has a partition table: the built-in
#   default runs on a volatile spool and says so, and that disk is left untouched.
#
# KVM is used when it can run a guest here, TCG otherwise. The guest's network is QEMU's
# user-mode network with restrict=on (no packet leaves QEMU) and one port forwarded from
# 127.0.0.1. The disks are read afterwards with debugfs (no mounting).
#
# Usage: image/boot-test.sh   (as root; installs QEMU, OVMF and the other tools it needs)
# Environment: SECMX_IMAGE_OUT (default target/image), SECMX_BOOT_TIMEOUT (default 150 s),
# SECMX_KEEP_TEST_DIR=1 to keep the consoles and disks
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE_DIR=${SECMX_IMAGE_OUT:-$REPO/target/image}
BOOT_TIMEOUT=${SECMX_BOOT_TIMEOUT:-150}
POWEROFF_TIMEOUT=90
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
LOCAL_DOMAIN=example.test

passed=0
failed=0
qemu_pids=()
TEST_DIR=""

log() {
	echo "boot-test: $*"
}

pass() {
	passed=$((passed + 1))
	echo "ok: $1"
}

fail() {
	failed=$((failed + 1))
	echo "FAIL: $1"
}

# check DESCRIPTION COMMAND...: runs the command, counts a pass or a failure.
check() {
	local description=$1
	shift
	if "$@"; then
		pass "$description"
	else
		fail "$description"
	fi
}

cleanup() {
	local pid
	for pid in "${qemu_pids[@]}"; do
		kill -0 "$pid" 2> /dev/null && kill -KILL "$pid" 2> /dev/null
	done
	[ -n "$TEST_DIR" ] && [ -z "${SECMX_KEEP_TEST_DIR:-}" ] && rm -rf "$TEST_DIR"
}

finish() {
	echo "boot-test: $passed passed, $failed failed"
	[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
	exit
}

install_test_tools() {
	local missing=() package version
	for package in ovmf seabios xorriso e2fsprogs dosfstools gdisk mtools python3; do
		command -v "$package" > /dev/null 2>&1 && continue
		dpkg-query -W -f='${Status}' "$package" 2> /dev/null | grep -q 'ok installed' ||
			missing+=("$package")
	done
	if ! dpkg-query -W -f='${Status}' qemu-system-x86 2> /dev/null | grep -q 'ok installed'; then
		# qemu-utils may be a newer release than Debian's qemu-system-x86 and would block its
		# install: take both at the version qemu-system-x86 has, even if that downgrades.
		[ -n "$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ { print $2 }')" ] ||
			apt-get update -q
		version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ { print $2 }')
		missing+=("qemu-system-x86=$version" "qemu-system-common=$version" "qemu-utils=$version")
	fi
	[ ${#missing[@]} -eq 0 ] && return
	log "installing ${missing[*]}"
	apt-get update -q > /dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		--allow-downgrades "${missing[@]}" > /dev/null
}

# Python helpers: a free loopback port, the banner wait, one SMTP transaction, the monitor.
write_helpers() {
	cat > "$TEST_DIR/smtp.py" <<- 'EOF'
		import smtplib, socket, ssl, sys, time

		def free_port():
		    with socket.socket() as s:
		        s.bind(("127.0.0.1", 0))
		        print(s.getsockname()[1])

		def banner(port, timeout):
		    # QEMU accepts on the forwarded port before the guest listens: only the 220 counts.
		    deadline = time.monotonic() + float(timeout)
		    while time.monotonic() < deadline:
		        try:
		            with socket.create_connection(("127.0.0.1", int(port)), timeout=3) as s:
		                s.settimeout(3)
		                line = s.makefile("rb").readline()
		                if line.startswith(b"220"):
		                    print(line.decode("ascii", "replace").strip())
		                    return 0
		        except OSError:
		            pass
		        time.sleep(0.2)
		    return 1

		def send(port, sender, recipient, token):
		    context = ssl.create_default_context()
		    context.check_hostname = False
		    context.verify_mode = ssl.CERT_NONE  # the appliance's generated self-signed cert
		    with smtplib.SMTP("127.0.0.1", int(port), timeout=60) as smtp:
		        smtp.ehlo("boot-test.localhost")
		        if not smtp.has_extn("starttls"):
		            print("no STARTTLS offered")
		            return 1
		        code, reply = smtp.starttls(context=context)
		        print(f"STARTTLS: {code} {reply.decode()} ({smtp.sock.version()})")
		        smtp.ehlo("boot-test.localhost")
		        message = (
		            f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: boot test\r\n"
		            f"Message-ID: <{token}@boot-test.localhost>\r\n\r\n{token}\r\n"
		        )
		        refused = smtp.sendmail(sender, [recipient], message)
		        print(f"accepted, refused: {refused}")
		        return 1 if refused else 0

		def monitor(path, command):
		    with socket.socket(socket.AF_UNIX) as s:
		        s.connect(path)
		        s.sendall(command.encode() + b"\n")
		        time.sleep(0.5)
		    return 0

		command = sys.argv[1]
		if command == "free-port":
		    free_port()
		elif command == "banner":
		    sys.exit(banner(*sys.argv[2:]))
		elif command == "send":
		    try:
		        sys.exit(send(*sys.argv[2:]))
		    except (OSError, smtplib.SMTPException) as error:
		        print(f"SMTP failed: {error!r}")
		        sys.exit(1)
		elif command == "monitor":
		    sys.exit(monitor(*sys.argv[2:]))
	EOF
}

# make_config_volume NAME dhcp|static iso|fat: the SECMX-CFG volume for one test, as an ISO
# image or a FAT disk image, with the network by DHCP or static (in QEMU's user-mode network the
# guest is 10.0.2.15, the gateway 10.0.2.2). Sets CONFIG_VOLUME to its path.
make_config_volume() {
	local name=$1 format=$3 network
	if [ "$2" = static ]; then
		network='address = "10.0.2.15/24"
gateway = "10.0.2.2"'
	else
		network='dhcp = true'
	fi
	mkdir -p "$TEST_DIR/config-$name"
	cat > "$TEST_DIR/config-$name/secmx.toml" <<- EOF
		hostname = "appliance.$LOCAL_DOMAIN"

		[[listener]]
		address = "0.0.0.0:25"
		role = "ber"

		[relay]
		local_domains = ["$LOCAL_DOMAIN"]
		trusted_networks = []

		[routes."$LOCAL_DOMAIN"]
		maildir = "maildir/$LOCAL_DOMAIN"

		[appliance]
		$network
		dns = []
		hostname = "appliance.$LOCAL_DOMAIN"
	EOF
	CONFIG_VOLUME=$TEST_DIR/config-$name.$format
	if [ "$format" = fat ]; then
		mkfs.fat -C -n SECMX-CFG "$CONFIG_VOLUME" 4096 > /dev/null &&
			MTOOLS_SKIP_CHECK=1 mcopy -i "$CONFIG_VOLUME" "$TEST_DIR/config-$name/secmx.toml" ::/
	else
		xorriso -as mkisofs -quiet -V SECMX-CFG -J -r -o "$CONFIG_VOLUME" \
			"$TEST_DIR/config-$name" 2> "$TEST_DIR/xorriso.log"
	fi
}

# Extracts the kernel and initramfs from the image's ESP (mtools reads the FAT at its offset).
extract_boot_files() {
	MTOOLS_SKIP_CHECK=1 mcopy -n -i "$IMAGE_DIR/secmx-appliance.raw@@1M" \
		::/secmx/vmlinuz ::/secmx/initrd.img "$TEST_DIR/"
}

# KVM if /dev/kvm can run this kernel to user space, else TCG.
choose_accelerator() {
	ACCEL=tcg
	CPU=max
	if [ -w /dev/kvm ]; then
		extract_boot_files
		qemu-system-x86_64 -accel kvm -cpu host -m 256 -nodefaults -display none -no-reboot \
			-serial "file:$TEST_DIR/kvm-probe.log" \
			-kernel "$TEST_DIR/vmlinuz" -initrd "$TEST_DIR/initrd.img" \
			-append "console=ttyS0 rdinit=/bin/busybox panic=-1 -- poweroff -f" \
			> "$TEST_DIR/kvm-probe.err" 2>&1 &
		QEMU_PID=$!
		qemu_pids+=("$QEMU_PID")
		wait_exit 60 || kill -KILL "$QEMU_PID" 2> /dev/null
		wait "$QEMU_PID" 2> /dev/null
		if grep -q 'reboot: Power down' "$TEST_DIR/kvm-probe.log"; then
			ACCEL=kvm
			CPU=host
		fi
	fi
	log "accelerator: $ACCEL"
}

# start_qemu NAME FIRMWARE MACHINE DEVICE-ARGS...: starts a guest in the background; sets
# QEMU_PID, PORT, CONSOLE and MONITOR.
start_qemu() {
	local name=$1 firmware=$2 machine=$3
	shift 3
	local firmware_args=()
	if [ "$firmware" = uefi ]; then
		[ -e "$TEST_DIR/$name-vars.fd" ] || cp "$OVMF_VARS" "$TEST_DIR/$name-vars.fd"
		firmware_args=(
			-drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE"
			-drive "if=pflash,format=raw,unit=1,file=$TEST_DIR/$name-vars.fd"
		)
	fi
	PORT=$(python3 "$TEST_DIR/smtp.py" free-port)
	CONSOLE=$TEST_DIR/$name-console-$BOOT.log
	MONITOR=$TEST_DIR/$name-monitor.sock
	rm -f "$MONITOR"
	BOOT_STARTED=$(date +%s%N)
	qemu-system-x86_64 -accel "$ACCEL" -cpu "$CPU" -machine "$machine" -smp 2 -m 1024 \
		"${firmware_args[@]}" -display none -serial "file:$CONSOLE" \
		-monitor "unix:$MONITOR,server=on,wait=off" \
		-netdev "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:$PORT-:25" \
		"$@" > "$TEST_DIR/$name-qemu-$BOOT.log" 2>&1 &
	QEMU_PID=$!
	qemu_pids+=("$QEMU_PID")
}

wait_banner() {
	local banner
	local milliseconds
	if banner=$(python3 "$TEST_DIR/smtp.py" banner "$PORT" "$BOOT_TIMEOUT"); then
		milliseconds=$((($(date +%s%N) - BOOT_STARTED) / 1000000))
		BANNER_SECONDS=$((milliseconds / 1000)).$((milliseconds % 1000 / 100))
		log "$banner (after $BANNER_SECONDS s)"
		return 0
	fi
	log "no banner within ${BOOT_TIMEOUT}s; console:"
	tail -n 40 "$CONSOLE" | sed 's/^/    /'
	return 1
}

# Waits up to $1 seconds for QEMU_PID to exit; true if it did.
wait_exit() {
	local ticks=$(($1 * 5))
	while kill -0 "$QEMU_PID" 2> /dev/null && [ "$ticks" -gt 0 ]; do
		sleep 0.2
		ticks=$((ticks - 1))
	done
	! kill -0 "$QEMU_PID" 2> /dev/null
}

# Presses the ACPI power button and waits for QEMU to exit by itself; true if it exited 0 and
# the console shows the given last words of the shutdown script.
power_off() {
	local last_words=$1 status
	python3 "$TEST_DIR/smtp.py" monitor "$MONITOR" system_powerdown
	if ! wait_exit "$POWEROFF_TIMEOUT"; then
		log "QEMU still running ${POWEROFF_TIMEOUT}s after the power button; console:"
		tail -n 20 "$CONSOLE" | sed 's/^/    /'
		kill -KILL "$QEMU_PID"
		wait "$QEMU_PID" 2> /dev/null
		return 1
	fi
	wait "$QEMU_PID"
	status=$?
	[ "$status" -eq 0 ] || log "QEMU exited with status $status"
	console_says "$last_words" || log "the console never said \"$last_words\""
	[ "$status" -eq 0 ] && console_says "$last_words"
}

# True if the appliance said this on the console (its lines: "secmx-appliance: [UPTIME] ...").
console_says() {
	grep -q "secmx-appliance: \[[0-9.]*\] $1" "$CONSOLE"
}

not_in_console() {
	! grep -q "$1" "$CONSOLE"
}

# Copies the spool disk's files out with debugfs (no mounting) into DIR.
read_spool() {
	local disk=$1 dir=$2
	rm -rf "$dir" "$dir.raw"
	mkdir -p "$dir"
	qemu-img convert -f qcow2 -O raw "$disk" "$dir.raw" &&
		debugfs -R "rdump / $dir" "$dir.raw" > /dev/null 2>&1
	local status=$?
	rm -f "$dir.raw"
	return $status
}

# Number of files under the spool copy's maildir that hold the token.
messages_with_token() {
	grep -rl --exclude-dir=tmp "$2" "$1/maildir/$LOCAL_DOMAIN" 2> /dev/null | wc -l
}

spool_uuid() {
	sed -n 's/.*secmx-appliance: \[[0-9.]*\] spool: .* uuid=\([0-9a-f-]*\).*/\1/p' "$1" | tail -n 1
}

# test_persistence NAME FIRMWARE MACHINE dhcp|static iso|fat DEVICE-ARGS...: two boots of one
# set of disks.
test_persistence() {
	local name=$1 firmware=$2 machine=$3 network=$4 config_format=$5 token uuid1 uuid2 devices
	local os=$TEST_DIR/$name-os.qcow2 spool=$TEST_DIR/$name-spool.qcow2
	token="boot-test-$name-$(date +%s%N)"
	qemu-img create -q -f qcow2 -F qcow2 -b "$IMAGE_DIR/secmx-appliance.qcow2" "$os"
	cp "$IMAGE_DIR/secmx-spool.qcow2" "$spool"
	make_config_volume "$name" "$network" "$config_format"
	devices=("${@:6}")
	# Placeholders in the device list: the two disks and the config ISO.
	devices=("${devices[@]//@OS@/$os}")
	devices=("${devices[@]//@SPOOL@/$spool}")
	devices=("${devices[@]//@CONFIG@/$CONFIG_VOLUME}")

	BOOT=1
	start_qemu "$name" "$firmware" "$machine" "${devices[@]}"
	if wait_banner; then
		pass "$name boot 1: 220 banner after ${BANNER_SECONDS%%.*} s"
		eval "${name}_banner_seconds=\$BANNER_SECONDS"
	else
		fail "$name boot 1: 220 banner"
	fi
	check "$name boot 1: blank spool disk formatted" \
		console_says "spool: .* is blank: formatting"
	check "$name boot 1: config read from the SECMX-CFG volume ($config_format)" \
		console_says "config: .* from SECMX-CFG volume"
	if [ "$network" = static ]; then
		check "$name boot 1: static address from the config" \
			console_says "network: eth0 10.0.2.15/24 (static)"
	else
		check "$name boot 1: address from DHCP" \
			console_says "network: eth0 10.0.2.15/24 from DHCP server"
	fi
	check "$name boot 1: message to $LOCAL_DOMAIN accepted over STARTTLS" \
		python3 "$TEST_DIR/smtp.py" send "$PORT" "sender@boot-test.localhost" \
		"postmaster@$LOCAL_DOMAIN" "$token"
	check "$name boot 1: ACPI power button stops the guest cleanly" power_off "spool unmounted"
	uuid1=$(spool_uuid "$CONSOLE")
	read_spool "$spool" "$TEST_DIR/$name-spool-1"
	check "$name boot 1: the message is in the Maildir on the spool disk" \
		test "$(messages_with_token "$TEST_DIR/$name-spool-1" "$token")" -eq 1

	BOOT=2
	start_qemu "$name" "$firmware" "$machine" "${devices[@]}"
	if wait_banner; then
		pass "$name boot 2: 220 banner after ${BANNER_SECONDS%%.*} s"
	else
		fail "$name boot 2: 220 banner"
	fi
	check "$name boot 2: spool disk not formatted again" not_in_console "formatting"
	uuid2=$(spool_uuid "$CONSOLE")
	check "$name boot 2: same spool filesystem as boot 1 (uuid ${uuid2:-none})" \
		test -n "$uuid1" -a "$uuid1" = "$uuid2"
	check "$name boot 2: ACPI power button stops the guest cleanly" power_off "spool unmounted"
	read_spool "$spool" "$TEST_DIR/$name-spool-2"
	check "$name boot 2: the message is still on the spool disk" \
		test "$(messages_with_token "$TEST_DIR/$name-spool-2" "$token")" -eq 1
}

# No config volume, no spool: the built-in default on a volatile spool. A disk with a partition
# table (and nothing else) is attached too: it must not be formatted.
test_defaults() {
	local name=defaults os=$TEST_DIR/defaults-os.qcow2 other=$TEST_DIR/defaults-other.raw before
	qemu-img create -q -f qcow2 -F qcow2 -b "$IMAGE_DIR/secmx-appliance.qcow2" "$os"
	truncate -s 256M "$other"
	sgdisk -o "$other" > /dev/null
	before=$(sha256sum < "$other")

	BOOT=1
	start_qemu "$name" uefi q35 \
		-drive "if=none,id=os,format=qcow2,file=$os" -device "virtio-blk-pci,drive=os,bootindex=0" \
		-drive "if=none,id=other,format=raw,file=$other" -device "nvme,drive=other,serial=other" \
		-device "vmxnet3,netdev=net0"
	if wait_banner; then
		pass "defaults: 220 banner after ${BANNER_SECONDS%%.*} s"
	else
		fail "defaults: 220 banner"
	fi
	check "defaults: the console says the built-in default runs" \
		console_says ".*No config volume labelled SECMX-CFG"
	check "defaults: the console warns of the volatile spool" \
		console_says ".*VOLATILE spool"
	check "defaults: the disk with a partition table is left alone (console)" \
		console_says "spool: .* is not blank and not labelled secmx-spool: not touched"
	check "defaults: ACPI power button stops the guest cleanly" power_off "powering off"
	check "defaults: the disk with a partition table is unchanged" \
		test "$(sha256sum < "$other")" = "$before"
}

main() {
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	[ "$(id -u)" = 0 ] || { echo "boot-test: run as root" >&2; exit 2; }
	for file in secmx-appliance.raw secmx-appliance.qcow2 secmx-spool.qcow2; do
		if [ ! -e "$IMAGE_DIR/$file" ]; then
			fail "image built: no $IMAGE_DIR/$file (run image/build.sh)"
			finish
		fi
	done
	install_test_tools
	TEST_DIR=$(mktemp -d /tmp/secmx-boot-test.XXXXXX)
	log "work directory $TEST_DIR"
	write_helpers
	# bash reports the probe's QEMU if KVM makes it abort: that goes to the probe's log.
	choose_accelerator 2>> "$TEST_DIR/kvm-probe.err"

	test_persistence uefi uefi q35 dhcp iso \
		-drive "if=none,id=os,format=qcow2,file=@OS@" -device "virtio-blk-pci,drive=os,bootindex=0" \
		-drive "if=none,id=spool,format=qcow2,file=@SPOOL@" -device "virtio-blk-pci,drive=spool" \
		-drive "if=none,id=config,media=cdrom,readonly=on,file=@CONFIG@" -device "ide-cd,drive=config" \
		-device "virtio-net-pci,netdev=net0"
	test_persistence bios bios pc static fat \
		-drive "if=none,id=os,format=qcow2,file=@OS@" -device "virtio-blk-pci,drive=os,bootindex=0" \
		-device "virtio-scsi-pci,id=scsi" \
		-drive "if=none,id=spool,format=qcow2,file=@SPOOL@" -device "scsi-hd,drive=spool,bus=scsi.0" \
		-drive "if=none,id=config,format=raw,file=@CONFIG@" -device "ide-hd,drive=config,bus=ide.0" \
		-device "e1000,netdev=net0"
	test_defaults

	log "boot to banner: UEFI ${uefi_banner_seconds:-?} s, BIOS ${bios_banner_seconds:-?} s ($ACCEL)"
	finish
}

main "$@"

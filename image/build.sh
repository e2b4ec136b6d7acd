#!/usr/bin/env bash
# Builds the secmx VM appliance into target/image/:
#
#   secmx-appliance.raw    one GPT disk that boots by UEFI (\EFI\BOOT\BOOTX64.EFI, a single-file
#                          kernel + initramfs image) and by legacy BIOS (syslinux, same ESP)
#   secmx-appliance.qcow2  the same disk as compressed qcow2
#   secmx-spool.qcow2      an empty spool disk (all zeros: the appliance formats it on first boot)
#   manifest.txt           what went in: package versions, secmx revision, checksums
#
# Usage: image/build.sh    (as root on Debian 12; installs the host tools it needs)
#
# Everything is made from plain files (dpkg-deb -x, cpio, objcopy, mkfs.fat and mtools,
# sgdisk, qemu-img): no loop devices, no mounts, no chroot. File times are SOURCE_DATE_EPOCH
# (default: the time of the last commit), so two builds of one commit from the same packages
# give the same image.
#
# Environment:
#   SECMX_BINARY      use this static secmx binary instead of building one
#   SECMX_SPOOL_SIZE  virtual size of secmx-spool.qcow2 (default 8G)
#   SECMX_IMAGE_OUT   output directory (default target/image)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=$REPO/image
OUT=${SECMX_IMAGE_OUT:-$REPO/target/image}
WORK=$OUT/work
CACHE=$OUT/cache
PKGROOT=$WORK/packages
ROOTFS=$WORK/rootfs
SPOOL_SIZE=${SECMX_SPOOL_SIZE:-8G}

KERNEL_CMDLINE="console=tty0 console=ttyS0,115200n8 loglevel=4 panic=10"
EFI_STUB=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
GPTMBR=/usr/lib/syslinux/mbr/gptmbr.bin
ESP_MIN_MIB=64

HOST_PACKAGES=(
	binutils ca-certificates cpio dosfstools e2fsprogs faketime gdisk git kmod lz4 mtools
	qemu-utils syslinux syslinux-common systemd-boot-efi
)
# What the guest is made of, besides the kernel and secmx.
GUEST_PACKAGES=(
	busybox-static util-linux e2fsprogs libext2fs2 libcom-err2 libblkid1 libuuid1 libcap-ng0
	rdate libbsd0 libmd0 libc6 ca-certificates
)

log() {
	echo "build: [${SECONDS}s] $*" >&2
}

die() {
	echo "build: error: $*" >&2
	exit 1
}

install_host_tools() {
	local missing=() package
	for package in "${HOST_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$package" 2> /dev/null | grep -q 'ok installed' ||
			missing+=("$package")
	done
	[ ${#missing[@]} -eq 0 ] && return
	log "installing host tools: ${missing[*]}"
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

build_secmx() {
	if [ -n "${SECMX_BINARY:-}" ]; then
		log "using secmx binary $SECMX_BINARY"
		SECMX=$SECMX_BINARY
		return
	fi
	log "building secmx (release, static)"
	local cargo_home=${CARGO_HOME:-$HOME/.cargo}
	(
		cd "$REPO"
		# SOURCE_DATE_EPOCH is kept from cargo: C build scripts of dependencies watch it, and a
		# changed value would rebuild them.
		env -u SOURCE_DATE_EPOCH \
			RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$REPO=secmx --remap-path-prefix=$cargo_home=cargo" \
			cargo build --release --locked --target x86_64-unknown-linux-gnu
	)
	SECMX=$REPO/target/x86_64-unknown-linux-gnu/release/secmx
}

candidate_version() {
	apt-cache policy "$1" | awk '/Candidate:/ { print $2 }'
}

# Downloads one package (the candidate version) into the cache unless it is there already.
fetch_package() {
	local package=$1 version file
	version=$(candidate_version "$package")
	[ -n "$version" ] && [ "$version" != "(none)" ] || die "no Debian package $package"
	file=$(printf '%s_%s_' "$package" "${version//:/%3a}")
	if ! compgen -G "$CACHE/debs/$file*.deb" > /dev/null; then
		(cd "$CACHE/debs" && apt-get -q -o APT::Sandbox::User=root download "$package=$version")
	fi
	echo "$package $version" >> "$WORK/packages.txt"
	dpkg-deb -x "$(compgen -G "$CACHE/debs/$file*.deb" | head -n 1)" "$PKGROOT"
}

fetch_guest_packages() {
	local kernel_package package
	mkdir -p "$CACHE/debs" "$PKGROOT"
	[ -n "$(candidate_version linux-image-amd64)" ] || apt-get update -q
	kernel_package=$(apt-cache depends linux-image-amd64 |
		awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
	[ -n "$kernel_package" ] || die "cannot tell which kernel linux-image-amd64 stands for"
	KVER=${kernel_package#linux-image-}
	log "fetching Debian packages (kernel $KVER)"
	: > "$WORK/packages.txt"
	for package in "$kernel_package" "${GUEST_PACKAGES[@]}"; do
		fetch_package "$package"
	done
	depmod -b "$PKGROOT" "$KVER"
}

# The module files named in modules.list and everything they depend on.
copy_modules() {
	local wanted moddir=lib/modules/$KVER
	wanted=$(grep -v '^[[:space:]]*\(#\|$\)' "$SRC/modules.list")
	mkdir -p "$ROOTFS/$moddir"
	for module in $wanted; do
		modprobe -C /dev/null -d "$PKGROOT" -S "$KVER" --show-depends "$module" ||
			die "kernel $KVER has no module $module"
	done | awk '$1 == "insmod" { print $2 }' | sort -u | while read -r path; do
		local relative=${path#"$PKGROOT"/}
		mkdir -p "$ROOTFS/$(dirname "$relative")"
		cp "$path" "$ROOTFS/$relative"
	done
	cp "$PKGROOT/$moddir"/modules.{order,builtin,builtin.modinfo} "$ROOTFS/$moddir/"
	depmod -b "$ROOTFS" "$KVER"
}

# Where a shared library is among the unpacked packages, relative to them.
find_library() {
	local dir
	for dir in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu; do
		if [ -e "$PKGROOT/$dir/$1" ]; then
			echo "$dir/$1"
			return
		fi
	done
}

# Copies a dynamically linked program from the unpacked packages, with its libraries.
copy_program() {
	local from=$PKGROOT/$1 to=$ROOTFS/${2:-$1} library found
	mkdir -p "$(dirname "$to")"
	cp "$from" "$to"
	for library in $(objdump -p "$from" | awk '$1 == "NEEDED" { print $2 }'); do
		[ -e "$ROOTFS/lib/x86_64-linux-gnu/$library" ] && continue
		found=$(find_library "$library")
		[ -n "$found" ] || die "library $library (for $1) is in none of the guest packages"
		copy_program "$found" "lib/x86_64-linux-gnu/$library"
	done
}

assemble_rootfs() {
	log "assembling the initramfs"
	rm -rf "$ROOTFS"
	mkdir -p "$ROOTFS"/{bin,sbin,usr/bin,usr/sbin,lib64,proc,sys,dev,run,tmp,root,etc/ssl/certs}
	mkdir -p "$ROOTFS"/{var/lib/secmx,etc/secmx}

	cp "$PKGROOT/bin/busybox" "$ROOTFS/bin/busybox"
	"$ROOTFS/bin/busybox" --list-full | while read -r applet; do
		[ -e "$ROOTFS/$applet" ] || ln -s /bin/busybox "$ROOTFS/$applet"
	done
	ln -s /bin/busybox "$ROOTFS/init"

	# Real tools where busybox's are missing or too small: these replace its applets.
	local program
	for program in sbin/blkid usr/bin/setpriv sbin/mke2fs sbin/e2fsck sbin/resize2fs usr/sbin/rdate; do
		rm -f "$ROOTFS/$program"
		copy_program "$program"
	done
	ln -sf mke2fs "$ROOTFS/sbin/mkfs.ext4"
	ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$ROOTFS/lib64/ld-linux-x86-64.so.2"
	cp "$PKGROOT/etc/mke2fs.conf" "$ROOTFS/etc/mke2fs.conf"
	ln -s /proc/mounts "$ROOTFS/etc/mtab"

	# The trust roots for outbound verification: Mozilla's set, as update-ca-certificates
	# would concatenate it.
	LC_ALL=C cat "$PKGROOT"/usr/share/ca-certificates/mozilla/*.crt \
		> "$ROOTFS/etc/ssl/certs/ca-certificates.crt"

	copy_modules
	objcopy --strip-debug "$SECMX" "$ROOTFS/usr/bin/secmx"
	cp -R "$SRC/rootfs/." "$ROOTFS/"
	os_release > "$ROOTFS/etc/os-release"

	chmod -R go-w "$ROOTFS"
	chmod 1777 "$ROOTFS/tmp"
	chmod 0700 "$ROOTFS/root"
}

secmx_version() {
	awk -F'"' '/^version *=/ { print $2; exit }' "$REPO/Cargo.toml"
}

os_release() {
	local revision
	revision=$(git -C "$REPO" describe --always --dirty 2> /dev/null || echo unknown)
	cat <<- EOF
		NAME="secmx appliance"
		ID=secmx-appliance
		VERSION="$(secmx_version) ($revision)"
		VERSION_ID=$(secmx_version)
		PRETTY_NAME="secmx appliance $(secmx_version)"
	EOF
}

# The initramfs is LZ4-compressed (the legacy frame format the kernel reads): it unpacks several
# times faster than zstd or xz, which matters most for emulated (TCG) boots, for a few MiB more.
make_initramfs() {
	find "$ROOTFS" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	(
		cd "$ROOTFS"
		find . -mindepth 1 | LC_ALL=C sort |
			cpio -o -H newc -R 0:0 --reproducible --quiet
	) | lz4 -q -l -9 > "$WORK/initrd.img"
	cp "$PKGROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
	log "initramfs: $(du -h "$WORK/initrd.img" | cut -f1), kernel: $(du -h "$WORK/vmlinuz" | cut -f1)"
}

# The single-file EFI image: systemd's EFI stub with the kernel, initramfs, command line and
# os-release added as PE sections, each placed after the previous one.
make_uki() {
	local align=4096 offset section file args=()
	echo -n "$KERNEL_CMDLINE" > "$WORK/cmdline"
	os_release > "$WORK/os-release"
	offset=0
	while read -r _ _ size vma _; do
		[ $((0x$vma + 0x$size)) -gt "$offset" ] && offset=$((0x$vma + 0x$size))
	done < <(objdump -h "$EFI_STUB" | awk 'NF == 7 && $1 ~ /^[0-9]+$/')
	for section in osrel:os-release cmdline:cmdline linux:vmlinuz initrd:initrd.img; do
		file=$WORK/${section#*:}
		offset=$(((offset + align - 1) / align * align))
		args+=(--add-section ".${section%%:*}=$file")
		args+=(--change-section-vma ".${section%%:*}=$(printf 0x%x "$offset")")
		offset=$((offset + $(stat -c %s "$file")))
	done
	# objcopy stamps PE files with the current time; its clock is stopped at SOURCE_DATE_EPOCH.
	faketime -f "$(date -u -d "@$SOURCE_DATE_EPOCH" '+%Y-%m-%d %H:%M:%S')" \
		objcopy "${args[@]}" "$EFI_STUB" "$WORK/BOOTX64.EFI"
}

syslinux_config() {
	cat <<- EOF
		DEFAULT secmx
		PROMPT 0
		TIMEOUT 0
		SERIAL 0 115200
		LABEL secmx
		  LINUX /secmx/vmlinuz
		  INITRD /secmx/initrd.img
		  APPEND $KERNEL_CMDLINE
	EOF
}

# A hex string derived from the source revision, for identifiers that must not vary between
# builds of one revision but should between revisions.
stable_hex() {
	echo "secmx-appliance $1 $(git -C "$REPO" rev-parse HEAD 2> /dev/null) $(secmx_version)" |
		sha256sum | cut -c1-32
}

stable_guid() {
	local h
	h=$(stable_hex "$1")
	echo "${h:0:8}-${h:8:4}-4${h:13:3}-8${h:17:3}-${h:20:12}"
}

# The EFI system partition as a FAT32 image: the EFI image at the removable-media path, the
# kernel and initramfs for syslinux, and syslinux itself.
make_esp() {
	local mib
	syslinux_config > "$WORK/syslinux.cfg"
	mib=$(du -cm "$WORK/BOOTX64.EFI" "$WORK/vmlinuz" "$WORK/initrd.img" | awk 'END { print $1 }')
	mib=$((mib + mib / 10 + 8))
	[ "$mib" -ge "$ESP_MIN_MIB" ] || mib=$ESP_MIN_MIB
	ESP_MIB=$mib

	rm -f "$WORK/esp.img"
	mkfs.fat -C -F 32 -n SECMX-BOOT -i "$(stable_hex fat | cut -c1-8)" --invariant \
		"$WORK/esp.img" $((mib * 1024)) > /dev/null
	find "$WORK" -maxdepth 1 -type f -exec touch -d "@$SOURCE_DATE_EPOCH" {} +
	export MTOOLS_SKIP_CHECK=1
	mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT ::/secmx ::/syslinux
	mcopy -m -i "$WORK/esp.img" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
	mcopy -m -i "$WORK/esp.img" "$WORK/vmlinuz" "$WORK/initrd.img" ::/secmx/
	mcopy -m -i "$WORK/esp.img" "$WORK/syslinux.cfg" ::/syslinux/syslinux.cfg
	syslinux --install --directory /syslinux "$WORK/esp.img"
}

# The OS disk: a GPT with one partition, the ESP, marked legacy-BIOS-bootable for syslinux's
# GPT-aware MBR code.
make_disk() {
	local raw=$OUT/secmx-appliance.raw
	rm -f "$raw"
	truncate -s $(((ESP_MIB + 2) * 1024 * 1024)) "$raw"
	sgdisk -o -U "$(stable_guid disk)" \
		-n "1:2048:+${ESP_MIB}M" -t 1:ef00 -c "1:EFI system partition" -u "1:$(stable_guid esp)" \
		-A 1:set:2 "$raw" > /dev/null
	dd if="$WORK/esp.img" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
	dd if="$GPTMBR" of="$raw" bs=440 count=1 conv=notrunc status=none
	sgdisk -v "$raw" | grep -q 'No problems found' || die "sgdisk finds problems in $raw"

	rm -f "$OUT/secmx-appliance.qcow2" "$OUT/secmx-spool.qcow2"
	qemu-img convert -c -f raw -O qcow2 "$raw" "$OUT/secmx-appliance.qcow2"
	qemu-img create -q -f qcow2 "$OUT/secmx-spool.qcow2" "$SPOOL_SIZE"
}

write_manifest() {
	{
		echo "secmx $(secmx_version) $(git -C "$REPO" describe --always --dirty 2> /dev/null)"
		echo "kernel command line: $KERNEL_CMDLINE"
		echo "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH"
		echo
		echo "Debian packages:"
		sed 's/^/  /' "$WORK/packages.txt"
		echo
		echo "sha256:"
		(cd "$OUT" && sha256sum secmx-appliance.raw secmx-appliance.qcow2 secmx-spool.qcow2) |
			sed 's/^/  /'
	} > "$OUT/manifest.txt"
}

main() {
	[ "$(id -u)" = 0 ] || die "run as root (it installs packages and sets file owners)"
	install_host_tools
	build_secmx
	export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2> /dev/null || echo 1)}
	export TZ=UTC
	[ -x "$SECMX" ] || die "no secmx binary at $SECMX"
	"$SECMX" check-config --config "$SRC/rootfs/etc/secmx-appliance/default.toml" > /dev/null ||
		die "secmx rejects the appliance's built-in default configuration"
	rm -rf "$WORK"
	mkdir -p "$WORK"
	fetch_guest_packages
	assemble_rootfs
	make_initramfs
	make_uki
	log "writing the disks"
	make_esp
	make_disk
	write_manifest
	rm -rf "$WORK"/{packages,rootfs}
	log "done:"
	ls -l "$OUT"/secmx-*.raw "$OUT"/secmx-*.qcow2 >&2
}

main "$@"

# Shared definitions for the appliance's boot, supervisor and shutdown scripts (sourced, not run).

APPLIANCE_RUN=/run/secmx-appliance
APPLIANCE_LIB=/lib/secmx-appliance
DEFAULT_CONFIG=/etc/secmx-appliance/default.toml

# The config volume is copied here; absolute paths /etc/secmx/... in secmx.toml name its files.
CONFIG_DIR=/etc/secmx
CONFIG_FILE=$CONFIG_DIR/secmx.toml

# secmx's data directory: the spool disk, or a tmpfs when there is none.
DATA_DIR=/var/lib/secmx

SPOOL_LABEL=secmx-spool
CONFIG_LABEL=SECMX-CFG

SECMX_UID=100
SECMX_GID=100

# Programs busybox also has as smaller applets. Its shell runs an applet in preference to a
# program found on PATH, so these are always called by their full path.
BLKID=/sbin/blkid
E2FSCK=/sbin/e2fsck
MKE2FS=/sbin/mke2fs
RDATE=/usr/sbin/rdate
RESIZE2FS=/sbin/resize2fs
SETPRIV=/usr/bin/setpriv

# Seconds secmx gets to finish its sessions and flush the spool after SIGTERM.
STOP_DEADLINE=60

# Prints a line, stamped with the seconds since boot, to /dev/console and to every other active console (e.g. the VGA screen when
# the serial port is the primary console), so an operator sees it wherever they look.
say() {
	local line uptime
	read -r uptime _ < /proc/uptime
	line="secmx-appliance: [$uptime] $*"
	echo "$line"
	for tty in $(console_mirrors); do
		echo "$line" > "/dev/$tty" 2> /dev/null
	done
}

# Like say, framed so it stands out among log lines.
shout() {
	say "********************************************************************"
	for line in "$@"; do
		say "*** $line"
	done
	say "********************************************************************"
}

# Active consoles other than the one behind /dev/console (the kernel lists that one last).
console_mirrors() {
	local active
	active=$(cat /sys/class/tty/console/active 2> /dev/null) || return 0
	set -- $active
	while [ $# -gt 1 ]; do
		echo "$1"
		shift
	done
}

# The values of one key of secmx.toml, one a line: config_value FILE TABLE KEY.
# TABLE is "" for top-level keys, "appliance" for [appliance], "listener" for [[listener]].
config_value() {
	awk -v want_table="$2" -v want_key="$3" -f "$APPLIANCE_LIB/toml.awk" "$1"
}

# True if a config value is a plain token: letters, digits and . : / _ - only. Values that
# reach commands are checked with this first.
plain_token() {
	case "$1" in
	"" | *[!A-Za-z0-9.:/_-]*) return 1 ;;
	*) return 0 ;;
	esac
}

# True if secmx.toml sets a key, even to an empty array: config_has FILE TABLE KEY.
config_has() {
	[ -n "$(awk -v want_table="$2" -v want_key="$3" -v exists_only=1 \
		-f "$APPLIANCE_LIB/toml.awk" "$1")" ]
}

"""The systems under test, each started fresh for every run in a directory of its own.

- ceiling: no MTA, the client talks to the sink directly;
- secmx: durable spool, mail for the benchmark domain relayed by route to the sink;
- secmx-dns: the same, but the sink is found by SecMX discovery (SRV, MX, A/AAAA) for the
  benchmark domain, served by a local unbound whose queries are counted;
- postfix: a private instance (its own config_directory and queue_directory) configured as
  a plain relay to the sink with its default durable queue and no local delivery.
"""

import os
import shutil
import subprocess
import time

from . import dns, procs

RECIPIENT_DOMAIN = "bench.example"
SENDER = "bench@source.example"
RECIPIENT = "user@" + RECIPIENT_DOMAIN


class Instance:
    """A started system: the port clients connect to, and the pid whose CPU and memory (with
    its workers') are the system's."""

    def __init__(self, name, port, pid, stop, log=None, extras=None):
        self.name = name
        self.port = port
        self.pid = pid
        self._stop = stop
        self.log = log
        self._extras = extras

    def stop(self):
        self._stop()

    def extras(self):
        """Figures of the run beyond the common ones, read after `stop`."""
        return self._extras() if self._extras else {}

    def log_tail(self, lines=15):
        if not self.log or not os.path.exists(self.log):
            return ""
        with open(self.log, errors="replace") as f:
            return "".join(f.readlines()[-lines:])


class Ceiling:
    name = "ceiling"
    tls = False
    single_process = False

    def start(self, registry, workdir, sink_port, tls_pair):
        return Instance(self.name, sink_port, None, lambda: None)

    def describe(self):
        return "the client sends straight to smtp-sink"


def secmx_config(data_dir, port, sink_port, tls_pair, outbound, log_level="warn", workers=0,
                 nameserver_port=None):
    """By route to the sink; with `nameserver_port`, by discovery through that DNS server."""
    cert, key = tls_pair
    if nameserver_port is None:
        how = "relay by route to the sink"
        dns_section = f"""[dns]
# Nothing listens here: the route below needs no lookups, and none may leave the machine.
nameservers = ["127.0.0.1:9"]

[routes."{RECIPIENT_DOMAIN}"]
next_hop = "127.0.0.1:{sink_port}"
"""
        smtp_port = ""
    else:
        how = f"the sink found by SecMX discovery for {RECIPIENT_DOMAIN}"
        dns_section = f"""[dns]
# A local unbound serving only {RECIPIENT_DOMAIN}: nothing leaves the machine.
nameservers = ["127.0.0.1:{nameserver_port}"]
"""
        smtp_port = f"smtp_port = {sink_port}\n"
    return f"""# secmx under benchmark: durable spool, {how}.
hostname = "secmx-bench.example"
data_dir = "{data_dir}"
workers = {workers}

[[listener]]
address = "127.0.0.1:{port}"
role = "ber"

[tls]
certificate = "{cert}"
private_key = "{key}"

{dns_section}
[outbound]
{smtp_port}max_connections_per_domain = {outbound['max_connections_per_domain']}
max_messages_per_connection = {outbound['max_messages_per_connection']}

[spool]
sync = true

[log]
level = "{log_level}"
"""


class Secmx:
    name = "secmx"
    tls = True
    single_process = True  # one process, so its VmHWM is its peak memory

    def __init__(self, binary, outbound, name="secmx"):
        self.binary = binary
        self.outbound = outbound
        self.config_text = None
        self.name = name

    def describe(self):
        return (
            f"{self.binary} serve, spool.sync = true, "
            f"max_connections_per_domain = {self.outbound['max_connections_per_domain']}, "
            f"max_messages_per_connection = {self.outbound['max_messages_per_connection']}"
        )

    def start(self, registry, workdir, sink_port, tls_pair):
        os.makedirs(workdir)
        return self._start_secmx(registry, workdir, sink_port, tls_pair)

    def _start_secmx(self, registry, workdir, sink_port, tls_pair, nameserver_port=None,
                     also_stop=None, extras=None):
        port = procs.free_port()
        config = os.path.join(workdir, "secmx.toml")
        self.config_text = secmx_config(
            os.path.join(workdir, "data"), port, sink_port, tls_pair, self.outbound,
            nameserver_port=nameserver_port,
        )
        with open(config, "w") as f:
            f.write(self.config_text)
        log = os.path.join(workdir, "secmx.log")
        with open(log, "wb") as out:
            proc = registry.start(
                [self.binary, "serve", "--config", config], stdout=out, stderr=out
            )

        def stop():
            registry.stop(proc)
            if also_stop:
                also_stop()

        instance = Instance(self.name, port, proc.pid, stop, log, extras)
        try:
            procs.wait_port(port, 30, proc=proc)
        except RuntimeError as e:
            instance.stop()
            raise RuntimeError(f"secmx {e}\n{instance.log_tail()}") from None
        return instance


class SecmxDns(Secmx):
    """secmx finding the sink by SecMX discovery: a local unbound serves the benchmark domain
    (MX to the sink's address, no SecMX SRV) with records of `ttl` seconds and logs every
    query; each run reports the queries per record against what the TTL allows."""

    def __init__(self, binary, outbound, ttl):
        super().__init__(binary, outbound, name="secmx-dns")
        self.ttl = ttl
        self.unbound_config = None

    def describe(self):
        return (super().describe() + f"; secmx-dns: discovery through a local unbound, "
                f"records with a TTL of {self.ttl} s")

    def start(self, registry, workdir, sink_port, tls_pair):
        os.makedirs(workdir)
        unbound_dir = os.path.join(workdir, "unbound")
        os.makedirs(unbound_dir)
        unbound = dns.Unbound(registry, unbound_dir, RECIPIENT_DOMAIN, self.ttl)
        self.unbound_config = unbound.config
        window = {"started": time.monotonic()}

        def stop_unbound():
            window["stopped"] = time.monotonic()
            unbound.stop()

        def extras():
            duration = window.get("stopped", time.monotonic()) - window["started"]
            return {"dns": dns.query_report(unbound.queries(), self.ttl, duration)}

        try:
            return self._start_secmx(registry, workdir, sink_port, tls_pair, unbound.port,
                                     stop_unbound, extras)
        except RuntimeError:
            unbound.stop()
            raise


POSTFIX_MASTER_CF = """\
# A private Postfix: the standard services, none chrooted, SMTP on one loopback port.
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
"""

POSTFIX_MAIN_CF = """\
# A private Postfix relaying everything from loopback to the sink, default durable queue.
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.example
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is disabled
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# No DNS: the relay host is an address literal and clients are not looked up (secmx does
# not look them up either).
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtp_tls_security_level = none
biff = no
{log_line}"""


def postfix_workers(master_pid):
    return procs.children(master_pid)


class Postfix:
    name = "postfix"
    tls = True
    single_process = False

    def __init__(self, log_to_file=False):
        self.log_to_file = log_to_file
        self.main_cf = None
        self.master_cf = None

    @staticmethod
    def version():
        out = subprocess.run(
            ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"

    def describe(self):
        return (
            f"Postfix {self.version()} private instance (postfix -c DIR start), "
            "relayhost = the sink, default queue (fsync before 250)"
        )

    def start(self, registry, workdir, sink_port, tls_pair):
        root = workdir
        etc, data = os.path.join(root, "etc"), os.path.join(root, "data")
        for d in (etc, os.path.join(root, "queue"), data):
            os.makedirs(d)
        shutil.chown(data, user="postfix")
        port = procs.free_port()
        log = os.path.join(root, "maillog")
        self.main_cf = POSTFIX_MAIN_CF.format(
            root=root,
            sink_port=sink_port,
            cert=tls_pair[0],
            key=tls_pair[1],
            log_line=f"maillog_file = {log}\n" if self.log_to_file else "",
        )
        self.master_cf = POSTFIX_MASTER_CF.format(port=port)
        with open(os.path.join(etc, "main.cf"), "w") as f:
            f.write(self.main_cf)
        with open(os.path.join(etc, "master.cf"), "w") as f:
            f.write(self.master_cf)

        started = registry.run(["postfix", "-c", etc, "start"], capture_output=True, text=True)
        pid = self._master_pid(root)
        if pid is not None:
            registry.adopt(pid, postfix_workers)

        def stop():
            registry.run(["postfix", "-c", etc, "stop"], capture_output=True)
            if pid is not None:
                procs.stop_daemon(pid, postfix_workers)
                registry.forget(pid)

        instance = Instance(self.name, port, pid, stop, log if self.log_to_file else None)
        if started.returncode != 0 or pid is None:
            stop()
            raise RuntimeError(f"postfix start failed: {started.stdout}{started.stderr}")
        try:
            procs.wait_port(port, 30, alive_pid=pid)
        except RuntimeError as e:
            stop()
            raise RuntimeError(f"postfix {e}") from None
        return instance

    @staticmethod
    def _master_pid(root):
        path = os.path.join(root, "queue", "pid", "master.pid")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(path) as f:
                    pid = int(f.read().strip())
                if procs.alive(pid):
                    return pid
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return None


def stop_stray_postfix(workdir):
    """Stops any private Postfix master still running from `workdir` (one whose start was
    interrupted before its pid was known)."""
    for root, _dirs, files in os.walk(workdir):
        if root.endswith(os.path.join("queue", "pid")) and "master.pid" in files:
            try:
                with open(os.path.join(root, "master.pid")) as f:
                    pid = int(f.read().strip())
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    is_master = b"master" in f.read()
            except (OSError, ValueError):
                continue
            if is_master and procs.alive(pid):
                procs.stop_daemon(pid, postfix_workers)


def make_tls_pair(registry, directory):
    """An ECDSA P-256 self-signed certificate for both MTAs' STARTTLS."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    registry.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )
    os.chmod(key, 0o644)  # Postfix's smtpd reads it after dropping privileges
    return cert, key

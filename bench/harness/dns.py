"""A local unbound serving the benchmark domain, and the count of queries it was asked.

unbound answers only from its local data (`local-zone: "." static`: every other name is
NXDOMAIN, nothing is forwarded or resolved recursively) on a loopback port, and logs every
query it receives (`log-queries: yes`). The benchmark domain has an MX pointing at the sink's
address, an SOA (so that "no such name" and "no data" answers can be cached, RFC 2308) and no
SecMX SRV record, so discovery asks for the SRV (NXDOMAIN), the MX, and the A and AAAA
(no data) of the MX host: four records, all with the same TTL.
"""

import os
import re
import socket
import struct
import time

from . import procs

UNBOUND = "unbound"
MX_HOST = "sink"

# `[1701712345] unbound[123:0] info: 127.0.0.1 bench.example. MX IN`
QUERY_LINE = re.compile(r"^\[(\d+)\] .* info: (\S+) (\S+) (\S+) IN$")

# Asked while waiting for unbound to answer; not counted.
PROBE_NAME = "probe.invalid."


def zone_records(domain, ttl):
    """The local data for `domain` (master-file syntax)."""
    host = f"{MX_HOST}.{domain}."
    return [
        f"{domain}. {ttl} IN SOA ns.{domain}. hostmaster.{domain}. 1 {ttl} {ttl} {ttl} {ttl}",
        f"{domain}. {ttl} IN MX 10 {host}",
        f"{host} {ttl} IN A 127.0.0.1",
    ]


def config_text(workdir, port, domain, ttl):
    lines = [
        "server:",
        "    interface: 127.0.0.1",
        f"    port: {port}",
        "    do-daemonize: no",
        "    use-syslog: no",
        '    logfile: ""',
        '    username: ""',
        '    chroot: ""',
        f'    directory: "{workdir}"',
        f'    pidfile: "{workdir}/unbound.pid"',
        "    num-threads: 1",
        "    so-reuseport: no",
        "    do-ip6: no",
        "    access-control: 127.0.0.0/8 allow",
        '    module-config: "iterator"',
        "    verbosity: 1",
        "    log-queries: yes",
        '    local-zone: "." static',
        f'    local-zone: "{domain}." static',
    ]
    lines += [f'    local-data: "{record}"' for record in zone_records(domain, ttl)]
    lines += ["remote-control:", "    control-enable: no", ""]
    return "\n".join(lines)


def _query(name, qtype=1):
    header = struct.pack(">HHHHHH", 0x5ec5, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return header + labels + b"\0" + struct.pack(">HH", qtype, 1)


def _answers(port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(_query(PROBE_NAME), ("127.0.0.1", port))
            reply, _ = s.recvfrom(512)
            return reply[:2] == b"\x5e\xc5"
        except OSError:
            return False


class Unbound:
    """One unbound process for one run; `queries()` reads what it was asked."""

    def __init__(self, registry, workdir, domain, ttl):
        self.workdir = workdir
        self.domain = domain
        self.ttl = ttl
        self.port = procs.free_port()
        self.config = config_text(workdir, self.port, domain, ttl)
        self.log = os.path.join(workdir, "unbound.log")
        config_file = os.path.join(workdir, "unbound.conf")
        with open(config_file, "w") as f:
            f.write(self.config)
        self._registry = registry
        with open(self.log, "wb") as out:
            self.proc = registry.start([UNBOUND, "-d", "-c", config_file], stdout=out,
                                       stderr=out)
        deadline = time.monotonic() + 10
        while not _answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"unbound did not start: {self.log_tail()}")
            time.sleep(0.05)

    def stop(self):
        self._registry.stop(self.proc)

    def log_tail(self, lines=10):
        with open(self.log, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def queries(self):
        """[(unix second, name, type)] of every query received, the probes left out."""
        found = []
        with open(self.log, errors="replace") as f:
            for line in f:
                m = QUERY_LINE.match(line.strip())
                if m and m.group(3).lower() != PROBE_NAME:
                    found.append((int(m.group(1)), m.group(3).lower(), m.group(4)))
        return found


def query_report(queries, ttl, duration_s):
    """Queries per record and the most one TTL allows over the run: one at the start, then one
    each time the cached answer has expired."""
    counts = {}
    for _, name, qtype in queries:
        key = f"{name} {qtype}"
        counts[key] = counts.get(key, 0) + 1
    allowed = int(duration_s // ttl) + 1
    records = [{"record": k, "queries": v} for k, v in sorted(counts.items())]
    worst = max((r["queries"] for r in records), default=0)
    return {
        "ttl_s": ttl,
        "duration_s": duration_s,
        "allowed_per_record": allowed,
        "records": records,
        "total_queries": sum(counts.values()),
        "max_per_record": worst,
        "within_bound": worst <= allowed,
    }

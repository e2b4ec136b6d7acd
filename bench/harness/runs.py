"""One measured run: a fresh sink, a fresh system, one load, counted to the last message.

Load run, in order: start the sink; start the system; read its CPU; run the client while
sampling the system's memory; wait until the sink holds every accepted message; read its
CPU and VmHWM; stop the system; let the sink's session counters settle; stop the sink.
"""

import contextlib
import os
import time

from . import clients, procs
from .sink import Sink


class Row:
    """One line of the matrix: message size, concurrent sessions, plaintext or STARTTLS."""

    def __init__(self, size, sessions, tls, messages):
        self.size = size
        self.sessions = sessions
        self.tls = tls
        self.messages = messages

    @property
    def key(self):
        return f"{self.size // 1024}k-s{self.sessions}-{'tls' if self.tls else 'plain'}"

    def label(self):
        return (
            f"{self.size // 1024} KiB, {self.sessions} "
            f"session{'s' if self.sessions > 1 else ''}, {'STARTTLS' if self.tls else 'plain'}"
        )


class Context:
    """What every run shares: the registry of processes, the work directory, binaries and
    settings."""

    def __init__(self, registry, workdir, tls_pair, load_binary, settings):
        self.registry = registry
        self.workdir = workdir
        self.tls_pair = tls_pair
        self.load_binary = load_binary
        self.settings = settings
        self._runs = 0

    def new_dir(self, name):
        self._runs += 1
        path = os.path.join(self.workdir, f"{self._runs:03d}-{name}")
        os.makedirs(path)
        return path


def _client(ctx, row, port, workdir, timeout):
    s = ctx.settings
    if row.tls or s.plain_client == "secmx-load":
        return clients.secmx_load(
            ctx.registry, ctx.load_binary, port, row.messages, row.sessions, row.size,
            row.tls, s.reuse, s.pipelining, s.load_executors, workdir, timeout,
        )
    return clients.smtp_source(
        ctx.registry, port, row.messages, row.sessions, row.size, s.reuse, workdir, timeout
    )


def load_run(ctx, system, row, rep):
    workdir = ctx.new_dir(f"{system.name}-{row.key}")
    result = {
        "system": system.name, "row": row.key, "size": row.size, "sessions": row.sessions,
        "tls": row.tls, "rep": rep, "messages": row.messages, "ok": False, "error": None,
    }
    sink = Sink(ctx.registry, procs.free_port())
    instance = None
    try:
        instance = system.start(ctx.registry, os.path.join(workdir, system.name), sink.port,
                                ctx.tls_pair)
        pid = instance.pid
        cpu_before = procs.cpu_seconds(pid) if pid else None
        memory = procs.MemorySampler(pid) if pid else contextlib.nullcontext()
        with memory:
            client = _client(ctx, row, instance.port, workdir, ctx.settings.client_timeout)
            wait = min(600.0, 60.0 + 10.0 * client["accept_s"])
            reached = sink.wait_messages(client["accepted"], wait)
            cpu_after = procs.cpu_seconds(pid) if pid else None
            hwm_kb = procs.status_kb(pid, "VmHWM") if system.single_process else None
        instance.stop()
        sink_sessions, delivered = sink.settle()
        log_tail = instance.log_tail()
        extras = instance.extras()
        instance = None
    except RuntimeError as e:
        result["error"] = str(e)
        return result
    finally:
        if instance is not None:
            instance.stop()
        sink.stop()

    accepted = client["accepted"]
    result.update({
        "client": client["client"],
        "client_argv": client["argv"],
        "accepted": accepted,
        "failed": client["failed"],
        "delivered": delivered,
        "lost": max(0, accepted - delivered),
        "duplicates": max(0, delivered - accepted),
        "sink_sessions": sink_sessions,
        "msgs_per_sink_session": delivered / sink_sessions if sink_sessions else None,
        "accept_s": client["accept_s"],
        "accept_rate": accepted / client["accept_s"] if client["accept_s"] > 0 else 0.0,
        # Both accepted and at the sink: the sink can count the last message a moment before
        # the client has read its 250 and exited.
        "e2e_s": max(reached, client["finished"]) - client["started"] if reached else None,
        "p50_ms": client["p50_ms"],
        "p99_ms": client["p99_ms"],
        "client_cpu_s": client["client_cpu_s"],
        "client_cpu_percent": 100.0 * client["client_cpu_s"] / max(client["accept_s"], 1e-9),
    })
    result["e2e_rate"] = accepted / result["e2e_s"] if result["e2e_s"] else None
    result.update(extras)
    if pid:
        cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
        result.update({
            "cpu_s": cpu,
            "cpu_per_1000": 1000.0 * cpu / accepted if cpu is not None and accepted else None,
            "peak_pss_kb": memory.peak_pss_kb,
            "peak_processes": memory.peak_processes,
            "vm_hwm_kb": hwm_kb,
        })

    problems = []
    if client["error"]:
        problems.append(f"client: {client['error']}")
    if client["failed"]:
        problems.append(f"{client['failed']} of {row.messages} messages not accepted")
    if result["lost"]:
        problems.append(f"{result['lost']} accepted messages never reached the sink")
    if result["duplicates"]:
        problems.append(f"{result['duplicates']} messages reached the sink twice")
    if "dns" in result and not result["dns"]["within_bound"]:
        d = result["dns"]
        worst = max(d["records"], key=lambda r: r["queries"])
        problems.append(
            f"{worst['queries']} DNS queries for {worst['record']} in {d['duration_s']:.1f} s "
            f"with a TTL of {d['ttl_s']} s (at most {d['allowed_per_record']})")
    if problems:
        result["error"] = "; ".join(problems) + (f"\n{log_tail}" if log_tail else "")
    result["ok"] = not problems
    return result


def handshake_run(ctx, system, rep):
    """STARTTLS handshakes per second, and per CPU-second of the system (per core)."""
    s = ctx.settings
    workdir = ctx.new_dir(f"{system.name}-handshake")
    result = {"system": system.name, "rep": rep, "ok": False, "error": None}
    sink = Sink(ctx.registry, procs.free_port())
    instance = None
    try:
        instance = system.start(ctx.registry, os.path.join(workdir, system.name), sink.port,
                                ctx.tls_pair)
        cpu_before = procs.cpu_seconds(instance.pid)
        run = clients.secmx_load_mode(
            ctx.registry, ctx.load_binary, instance.port, "handshake",
            ["--sessions", s.handshake_sessions, "--duration", s.handshake_seconds],
            workdir, timeout=s.handshake_seconds + 120,
        )
        cpu_after = procs.cpu_seconds(instance.pid)
    except RuntimeError as e:
        result["error"] = str(e)
        return result
    finally:
        if instance is not None:
            instance.stop()
        sink.stop()

    summary = run["summary"]
    if summary is None:
        result["error"] = f"secmx-load gave no summary: {run['stderr']}"
        return result
    cpu = cpu_after - cpu_before
    result.update({
        "argv": run["argv"],
        "handshakes": summary["handshakes"],
        "failed": summary["failed"],
        "handshakes_per_s": summary["handshakes_per_s"],
        "server_cpu_s": cpu,
        "handshakes_per_cpu_s": summary["handshakes"] / cpu if cpu > 0 else None,
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "client_cpu_percent": summary["cpu_percent"],
    })
    result["ok"] = summary["failed"] == 0 and summary["handshakes"] > 0
    if not result["ok"]:
        result["error"] = summary["first_error"] or "no handshake completed"
    return result


def idle_run(ctx, system):
    """Many idle sessions held at once: the system's resident memory while they are held."""
    s = ctx.settings
    workdir = ctx.new_dir(f"{system.name}-idle")
    result = {"system": system.name, "sessions": s.idle_sessions, "ok": False, "error": None}
    sink = Sink(ctx.registry, procs.free_port())
    instance = None
    held = {}
    try:
        instance = system.start(ctx.registry, os.path.join(workdir, system.name), sink.port,
                                ctx.tls_pair)
        pid = instance.pid
        time.sleep(0.5)
        result["rss_before_kb"] = procs.status_kb(pid, "VmRSS")

        def on_stderr(line):
            if '"event":"established"' in line:
                held["rss_kb"] = procs.status_kb(pid, "VmRSS")
                held["pss_kb"] = sum(procs.pss_kb(p) for p in [pid] + procs.children(pid))
                held["line"] = line

        sources = max(1, -(-s.idle_sessions // 50))  # 50 sessions per client address
        run = clients.secmx_load_mode(
            ctx.registry, ctx.load_binary, instance.port, "idle",
            ["--sessions", s.idle_sessions, "--hold", s.idle_hold, "--source-addrs", sources,
             "--timeout", 60],
            workdir, timeout=s.idle_hold + 300, on_stderr=on_stderr,
        )
        result["vm_hwm_kb"] = procs.status_kb(pid, "VmHWM")
    except RuntimeError as e:
        result["error"] = str(e)
        return result
    finally:
        if instance is not None:
            instance.stop()
        sink.stop()

    summary = run["summary"]
    if summary is None or "rss_kb" not in held:
        result["error"] = f"secmx-load idle run incomplete: {run['stderr']}"
        return result
    established = summary["established"]
    result.update({
        "argv": run["argv"],
        "source_addresses": sources,
        "established": established,
        "held": summary["held"],
        "failed": summary["failed"],
        "rss_held_kb": held["rss_kb"],
        "pss_held_kb": held["pss_kb"],
        "kb_per_session": (held["rss_kb"] - result["rss_before_kb"]) / established
        if established else None,
        "client_cpu_s": run["client_cpu_s"],
    })
    result["ok"] = summary["held"] == s.idle_sessions
    if not result["ok"]:
        result["error"] = (
            f"{summary['held']} of {s.idle_sessions} sessions held: {summary['first_error']}"
        )
    return result

"""The load clients: Postfix's smtp-source (plaintext) and secmx-load (STARTTLS, latency).

Both are timed from just before they start until they exit (their last message has had its
250 reply by then); their own CPU time comes from wait4's rusage.
"""

import json
import os
import re
import subprocess
import threading
import time

from .systems import RECIPIENT, SENDER


def _wait_with_rusage(proc, timeout):
    """Waits for a child and returns its rusage (the child is reaped here)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            raise RuntimeError(f"{proc.args[0]} did not finish within {timeout:.0f}s")
        time.sleep(0.005)


def run_client(registry, argv, timeout, workdir, name):
    out_path = os.path.join(workdir, f"{name}.out")
    err_path = os.path.join(workdir, f"{name}.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.monotonic()
        proc = registry.start(argv, stdout=out, stderr=err)
        try:
            usage = _wait_with_rusage(proc, timeout)
        finally:
            registry.stop(proc)
        finished = time.monotonic()
    with open(out_path, errors="replace") as f:
        stdout = f.read()
    with open(err_path, errors="replace") as f:
        stderr = f.read()
    return {
        "started": started,
        "finished": finished,
        "status": proc.returncode,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "stdout": stdout,
        "stderr": stderr,
    }


def smtp_source(registry, port, messages, sessions, size, reuse, workdir, timeout):
    argv = ["smtp-source", "-c", "-s", sessions, "-m", messages, "-l", size,
            "-f", SENDER, "-t", RECIPIENT, "-M", "client.example"]
    if reuse:
        argv.append("-d")
    argv.append(f"127.0.0.1:{port}")
    run = run_client(registry, argv, timeout, workdir, "smtp-source")
    counts = re.findall(r"\d+", run["stdout"])
    accepted = int(counts[-1]) if counts else 0
    return {
        "client": "smtp-source",
        "argv": " ".join(map(str, argv)),
        "accepted": accepted,
        "failed": messages - accepted,
        "accept_s": run["finished"] - run["started"],
        "started": run["started"],
        "finished": run["finished"],
        "p50_ms": None,
        "p99_ms": None,
        "client_cpu_s": run["cpu_s"],
        "error": None if run["status"] == 0 else (run["stderr"].strip()[-300:] or "failed"),
    }


def secmx_load(registry, binary, port, messages, sessions, size, starttls, reuse, pipelining,
               executors, workdir, timeout):
    argv = [binary, "--server", f"127.0.0.1:{port}", "--sessions", sessions,
            "--messages", messages, "--size", size, "--from", SENDER, "--to", RECIPIENT,
            "--executors", executors]
    if starttls:
        argv.append("--starttls")
    if not reuse:
        argv.append("--connection-per-message")
    if pipelining:
        argv.append("--pipelining")
    run = run_client(registry, argv, timeout, workdir, "secmx-load")
    summary = parse_summary(run["stdout"])
    if summary is None:
        return {
            "client": "secmx-load", "argv": " ".join(map(str, argv)), "accepted": 0,
            "failed": messages, "accept_s": run["finished"] - run["started"],
            "started": run["started"], "finished": run["finished"],
            "p50_ms": None, "p99_ms": None,
            "client_cpu_s": run["cpu_s"],
            "error": f"no summary (status {run['status']}): {run['stderr'].strip()[-300:]}",
        }
    return {
        "client": "secmx-load",
        "argv": " ".join(map(str, argv)),
        "accepted": summary["accepted"],
        "failed": summary["failed"],
        "accept_s": run["finished"] - run["started"],
        "started": run["started"],
        "finished": run["finished"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "client_cpu_s": run["cpu_s"],
        "load_summary": summary,
        "error": summary["first_error"] if summary["failed"] else None,
    }


def parse_summary(stdout):
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def secmx_load_mode(registry, binary, port, mode, extra, workdir, timeout, on_stderr=None):
    """Runs secmx-load in handshake or idle mode. `on_stderr` is called with each stderr line
    as it arrives (idle mode announces when every session is up)."""
    argv = [binary, "--server", f"127.0.0.1:{port}", "--mode", mode] + list(extra)
    started = time.monotonic()
    proc = registry.start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines = []
    try:
        for raw in proc.stderr:
            line = raw.decode(errors="replace").strip()
            lines.append(line)
            if on_stderr:
                on_stderr(line)
        stdout = proc.stdout.read().decode(errors="replace")
        usage = _wait_with_rusage(proc, timeout)
    finally:
        watchdog.cancel()
        registry.stop(proc)
    return {
        "argv": " ".join(map(str, argv)),
        "status": proc.returncode,
        "elapsed_s": time.monotonic() - started,
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
        "summary": parse_summary(stdout),
        "stderr": "\n".join(lines[-5:]),
    }

"""Processes the benchmark starts, and what /proc says about them.

Every process is registered when started and stopped by pid when the benchmark ends, however
it ends. CPU time and memory come from /proc: utime+stime (and, for a parent that reaps its
workers, cutime+cstime) and PSS from smaps_rollup.
"""

import os
import signal
import socket
import subprocess
import threading
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Registry:
    """Everything started, so that everything is stopped by pid on exit."""

    def __init__(self):
        self._children = []  # Popen objects
        self._daemons = {}  # pid -> function listing its workers (daemons we do not wait for)
        self.commands = []  # every command line, for the results file

    def start(self, argv, **kwargs):
        self.commands.append(" ".join(str(a) for a in argv))
        proc = subprocess.Popen([str(a) for a in argv], **kwargs)
        self._children.append(proc)
        return proc

    def run(self, argv, **kwargs):
        """Runs a short command to completion (setup steps), recording it."""
        self.commands.append(" ".join(str(a) for a in argv))
        return subprocess.run([str(a) for a in argv], **kwargs)

    def adopt(self, pid, workers):
        """A daemon that detached from us (Postfix's master): stopped by pid on exit too."""
        self._daemons[pid] = workers

    def forget(self, pid):
        self._daemons.pop(pid, None)

    def stop(self, proc, timeout=10.0):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self._children:
            self._children.remove(proc)

    def stop_all(self):
        for pid, workers in list(self._daemons.items()):
            stop_daemon(pid, workers)
        self._daemons.clear()
        for proc in reversed(list(self._children)):
            try:
                self.stop(proc, timeout=5.0)
            except OSError:
                pass


def stop_daemon(pid, workers, timeout=10.0):
    """SIGTERM to a daemon, then SIGKILL to it and to whatever workers it left behind."""
    left = workers(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    for victim in [pid] + left:
        if alive(victim):
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass


def alive(pid):
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return _stat_fields(f.read())[0] != "Z"
    except OSError:
        return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout, proc=None, alive_pid=None):
    """Waits until something accepts on 127.0.0.1:port; fails early if the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening")
        if alive_pid is not None and not alive(alive_pid):
            raise RuntimeError("exited before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on 127.0.0.1:{port} after {timeout:.0f}s")


def _stat_fields(text):
    # Fields after the command name, which may itself contain spaces and parentheses.
    return text[text.rindex(")") + 2 :].split()


def stat(pid):
    """(state, ppid, own CPU ticks, reaped children's CPU ticks) or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = _stat_fields(f.read())
    except OSError:
        return None
    # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14..17.
    own = int(fields[11]) + int(fields[12])
    reaped = int(fields[13]) + int(fields[14])
    return fields[0], int(fields[1]), own, reaped


def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = stat(int(entry))
            if info is not None and info[1] == pid:
                found.append(int(entry))
    return found


def cpu_seconds(pid):
    """CPU of a process and its workers: its own, that of workers it has reaped, and that of
    live workers. A delta of two readings covers workers that came and went in between."""
    info = stat(pid)
    if info is None:
        return None
    total = info[2] + info[3]
    for child in children(pid):
        child_info = stat(child)
        if child_info is not None:
            total += child_info[2]
    return total / CLOCK_TICKS


def status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler:
    """Samples the summed PSS of a process and its workers a few times a second; keeps the
    peak and the largest number of processes seen."""

    def __init__(self, pid, interval=0.2):
        self.pid = pid
        self.interval = interval
        self.peak_pss_kb = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self):
        pids = [self.pid] + children(self.pid)
        self.peak_pss_kb = max(self.peak_pss_kb, sum(pss_kb(p) for p in pids))
        self.peak_processes = max(self.peak_processes, len(pids))

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

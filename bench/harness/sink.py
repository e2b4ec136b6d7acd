"""Postfix's smtp-sink as the final receiver, counted through its -c output.

`smtp-sink -c` writes `sess=N quit=N mesg=N` followed by a carriage return whenever a
session ends, a QUIT is executed or a message's final dot arrives. The counters are read as
they are written, so the moment the last message reaches the sink is known to a few
milliseconds. (`-M count` is not used: it exits before answering the last message.)
"""

import os
import re
import threading
import time

from . import procs

COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")


class Sink:
    def __init__(self, registry, port, max_connections=1024):
        self.port = port
        self.sessions = 0
        self.messages = 0
        self._changed = threading.Condition()
        self._last_change = time.monotonic()
        argv = ["smtp-sink", "-c", "-m", max_connections]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
        argv += [f"127.0.0.1:{port}", "1024"]
        self._registry = registry
        self.proc = registry.start(argv, stdout=procs.subprocess.PIPE, stderr=procs.subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        procs.wait_port(port, 10, proc=self.proc)
        # That readiness probe was a session too; it is not counted as the sender's.
        self.probe_sessions = 1

    def _read(self):
        pending = b""
        while True:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return
            pending += chunk
            *records, pending = pending.split(b"\r")
            for record in reversed(records):
                found = COUNTERS.search(record)
                if found:
                    with self._changed:
                        self.sessions = int(found.group(1))
                        self.messages = int(found.group(3))
                        self._last_change = time.monotonic()
                        self._changed.notify_all()
                    break

    def wait_messages(self, count, timeout):
        """Waits until the sink has `count` messages; returns the monotonic time it got there,
        or None on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.messages < count:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self._changed.wait(min(left, 0.5))
            return self._last_change

    def settle(self, quiet=0.3, timeout=5.0):
        """Waits until the counters have not moved for `quiet` seconds (sessions closing after
        the sender stopped); returns (sessions, messages)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._changed:
                if time.monotonic() - self._last_change >= quiet:
                    break
            time.sleep(0.05)
        with self._changed:
            return max(0, self.sessions - self.probe_sessions), self.messages

    def stop(self):
        self._registry.stop(self.proc)
        self._reader.join(timeout=2)

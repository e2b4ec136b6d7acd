#!/usr/bin/env python3
"""Sends uniquely identified messages to an SMTP server from several threads and records, for
each one, what the server said.

Usage: load_client.py HOST PORT JOURNAL [options]

  --from ADDR --to ADDR      envelope (and header) addresses
  --prefix P                 Message-IDs are <P-THREAD-SEQ@load.test>
  --threads N                parallel sessions (default 4)
  --seconds S                stop sending after S seconds (default 60)
  --stop-file PATH           stop sending as soon as PATH exists
  --limit N                  stop after N messages in total (default: no limit)
  --per-session N            transactions per connection before QUIT (default 5)
  --size BYTES               approximate message size (default 2000)
  --max-size BYTES           sizes vary uniformly between --size and this (default: --size)
  --tls-rate R               share of sessions that use STARTTLS first (default 0)
  --cafile PATH              CA certificate the server's certificate must chain to
  --abort-rate R             share of transactions the client abandons mid-way (default 0)
  --stop-on-code C           every thread stops after a reply to DATA with code C
  --seed S                   random seed (default 1)

JOURNAL gets one line per message, flushed at once:

  acked   <id> <reply>    the server answered 250 to the end of DATA: it took responsibility
  refused <id> <reply>    the server refused the message (or its MAIL/RCPT) with this reply
  unknown <id> <error>    the whole message was sent but the connection failed before a reply
  unsent  <id> <error>    the connection failed before the end of DATA was sent
  aborted <id> <stage>    the client hung up on purpose before the end of DATA

At the end one line is printed on stdout:

  summary messages=N sessions=N tls_sessions=N acked=N refused=N unknown=N unsent=N aborted=N
"""

import os
import random
import smtplib
import socket
import ssl
import struct
import sys
import threading
import time

ABORT_STAGES = ("after-rcpt", "mid-data", "before-dot")


class Journal:
    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()
        self.counts = {}
        self.total = 0
        self.sessions = 0
        self.tls_sessions = 0

    def note(self, outcome, message_id, detail):
        detail = " ".join(str(detail).split())
        with self.lock:
            self.file.write(f"{outcome} {message_id} {detail}\n")
            self.file.flush()
            self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def session(self, tls):
        with self.lock:
            self.sessions += 1
            self.tls_sessions += int(tls)

    def claim(self, limit):
        """Reserves one message of the total budget; False when the budget is spent."""
        with self.lock:
            if limit is not None and self.total >= limit:
                return False
            self.total += 1
            return True


def text(reply):
    code, message = reply
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return f"{code} {message}"


def body_of(sender, recipient, message_id, size, rng):
    header = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: load {message_id}\r\n"
        f"Message-ID: {message_id}\r\n\r\n"
    )
    lines = [f"first line of {message_id}", ". a line that needs dot-stuffing"]
    filler_length = max(0, size - len(header))
    while sum(len(line) + 2 for line in lines) < filler_length:
        lines.append("".join(rng.choice("abcdefghij klmnopqrstuvwxyz") for _ in range(70)))
    return header + "\r\n".join(lines) + "\r\n"


def stuffed(message):
    out = []
    for line in message.split("\r\n"):
        out.append("." + line if line.startswith(".") else line)
    return "\r\n".join(out).encode()


def hang_up(smtp, rng):
    """Drops the connection without QUIT: half the time with a reset, half with a plain close."""
    sock = smtp.sock
    if sock is None:
        return
    try:
        if rng.random() < 0.5:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
    smtp.sock = None
    smtp.file = None


class Worker(threading.Thread):
    def __init__(self, index, options, journal, stop):
        super().__init__(daemon=True)
        self.index = index
        self.options = options
        self.journal = journal
        self.stop = stop
        self.rng = random.Random(f"{options['seed']}-{index}")
        self.sequence = 0

    def stopping(self):
        if self.stop.is_set():
            return True
        stop_file = self.options["stop_file"]
        if stop_file and os.path.exists(stop_file):
            self.stop.set()
        if time.monotonic() >= self.options["deadline"]:
            self.stop.set()
        return self.stop.is_set()

    def run(self):
        while not self.stopping():
            try:
                smtp = self.connect()
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)
                continue
            try:
                self.session(smtp)
            finally:
                try:
                    smtp.close()
                except OSError:
                    pass

    def connect(self):
        o = self.options
        smtp = smtplib.SMTP(o["host"], o["port"], local_hostname="load.test", timeout=30)
        code, _ = smtp.ehlo()
        if code != 250:
            raise smtplib.SMTPException("EHLO refused")
        tls = self.rng.random() < o["tls_rate"]
        if tls:
            context = ssl.create_default_context(cafile=o["cafile"])
            context.check_hostname = False
            smtp.starttls(context=context)
            smtp.ehlo()
        self.journal.session(tls)
        return smtp

    def session(self, smtp):
        for _ in range(self.options["per_session"]):
            if self.stopping():
                break
            if not self.journal.claim(self.options["limit"]):
                self.stop.set()
                break
            self.sequence += 1
            message_id = f"<{self.options['prefix']}-{self.index}-{self.sequence}@load.test>"
            if not self.transaction(smtp, message_id):
                return
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            pass

    def transaction(self, smtp, message_id):
        """One message; False when the connection is no longer usable."""
        o = self.options
        abort = self.rng.choice(ABORT_STAGES) if self.rng.random() < o["abort_rate"] else None
        size = self.rng.randint(o["size"], max(o["size"], o["max_size"]))
        message = body_of(o["sender"], o["recipient"], message_id, size, self.rng)
        sent_everything = False
        try:
            reply = smtp.mail(o["sender"])
            if reply[0] != 250:
                self.journal.note("refused", message_id, text(reply))
                return True
            reply = smtp.rcpt(o["recipient"])
            if reply[0] != 250:
                self.journal.note("refused", message_id, text(reply))
                smtp.rset()
                return True
            if abort == "after-rcpt":
                self.journal.note("aborted", message_id, abort)
                hang_up(smtp, self.rng)
                return False
            reply = smtp.docmd("DATA")
            if reply[0] != 354:
                self.journal.note("refused", message_id, text(reply))
                return True
            data = stuffed(message)
            if abort == "mid-data":
                smtp.send(data[: len(data) // 2])
                self.journal.note("aborted", message_id, abort)
                hang_up(smtp, self.rng)
                return False
            if abort == "before-dot":
                smtp.send(data)
                self.journal.note("aborted", message_id, abort)
                hang_up(smtp, self.rng)
                return False
            smtp.send(data + b".\r\n")
            sent_everything = True
            reply = smtp.getreply()
        except (OSError, smtplib.SMTPException) as error:
            outcome = "unknown" if sent_everything else "unsent"
            self.journal.note(outcome, message_id, type(error).__name__)
            return False
        if reply[0] == 250:
            self.journal.note("acked", message_id, text(reply))
        else:
            self.journal.note("refused", message_id, text(reply))
            if reply[0] == o["stop_on_code"]:
                self.stop.set()
        if reply[0] == -1:
            return False
        return True


def main():
    args = sys.argv[1:]
    host, port, journal_path = args[0], int(args[1]), args[2]
    raw = dict(zip(args[3::2], args[4::2]))
    options = {
        "host": host,
        "port": port,
        "sender": raw.get("--from", "load@a.test"),
        "recipient": raw.get("--to", "sink@b.test"),
        "prefix": raw.get("--prefix", "load"),
        "threads": int(raw.get("--threads", "4")),
        "deadline": time.monotonic() + float(raw.get("--seconds", "60")),
        "stop_file": raw.get("--stop-file"),
        "limit": int(raw["--limit"]) if "--limit" in raw else None,
        "per_session": int(raw.get("--per-session", "5")),
        "size": int(raw.get("--size", "2000")),
        "max_size": int(raw.get("--max-size", raw.get("--size", "2000"))),
        "tls_rate": float(raw.get("--tls-rate", "0")),
        "cafile": raw.get("--cafile"),
        "abort_rate": float(raw.get("--abort-rate", "0")),
        "stop_on_code": int(raw.get("--stop-on-code", "0")),
        "seed": raw.get("--seed", "1"),
    }
    journal = Journal(journal_path)
    stop = threading.Event()
    workers = [Worker(i, options, journal, stop) for i in range(options["threads"])]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    counts = " ".join(
        f"{outcome}={journal.counts.get(outcome, 0)}"
        for outcome in ("acked", "refused", "unknown", "unsent", "aborted")
    )
    print(
        f"summary messages={journal.total} sessions={journal.sessions} "
        f"tls_sessions={journal.tls_sessions} {counts}",
        flush=True,
    )


if __name__ == "__main__":
    main()

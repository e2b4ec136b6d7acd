#!/usr/bin/env python3
"""A plaintext SMTP receiver that records the Message-ID of every message it accepts.

Usage: recording_receiver.py HOST PORT RECORD_FILE [--defer-rate R] [--seed S]

Speaks enough ESMTP for an MTA relaying to it (EHLO/HELO, PIPELINING, 8BITMIME, SIZE, MAIL,
RCPT, DATA, RSET, NOOP, QUIT), one thread per connection. With --defer-rate R each RCPT is
refused with 450 4.2.0 with probability R/4 and each message that reached the end of DATA is
refused with 451 4.3.0 with probability R; otherwise it is accepted.

RECORD_FILE gets one line per outcome at the end of DATA, written and flushed before the reply
is sent (so a message is recorded as accepted even when its 250 never reaches the sender):

    accepted <message-id>
    deferred <message-id>
"""

import random
import socket
import socketserver
import sys
import threading

record_lock = threading.Lock()
record = None
defer_rate = 0.0
rng = random.Random()
rng_lock = threading.Lock()


def chance(p):
    with rng_lock:
        return rng.random() < p


def note(outcome, message_id):
    with record_lock:
        record.write(f"{outcome} {message_id}\n")
        record.flush()


def message_id_of(data):
    """The Message-ID field of the header section (unfolded), or a placeholder."""
    header = data.split(b"\r\n\r\n", 1)[0]
    lines = header.split(b"\r\n")
    for i, line in enumerate(lines):
        if line.lower().startswith(b"message-id:"):
            value = line.split(b":", 1)[1]
            for cont in lines[i + 1 :]:
                if cont[:1] in (b" ", b"\t"):
                    value += cont
                else:
                    break
            return value.strip().decode("utf-8", "replace") or "<empty>"
    return "<none>"


class Session(socketserver.StreamRequestHandler):
    timeout = 60

    def reply(self, text):
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self):
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reply("220 sink.test ESMTP recording receiver")
        recipients = 0
        sender = False
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            command = line.rstrip(b"\r\n").decode("utf-8", "replace")
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.reply("250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 52428800")
            elif verb == "HELO":
                self.reply("250 sink.test")
            elif verb == "MAIL":
                sender, recipients = True, 0
                self.reply("250 2.1.0 ok")
            elif verb == "RCPT":
                if not sender:
                    self.reply("503 5.5.1 MAIL first")
                elif chance(defer_rate / 4):
                    self.reply("450 4.2.0 mailbox busy, try later")
                else:
                    recipients += 1
                    self.reply("250 2.1.5 ok")
            elif verb == "DATA":
                if not sender or recipients == 0:
                    self.reply("554 5.5.1 no valid recipients")
                    continue
                self.reply("354 go ahead")
                data = self.read_data()
                if data is None:
                    return
                message_id = message_id_of(data)
                if chance(defer_rate):
                    note("deferred", message_id)
                    self.reply("451 4.3.0 try again later")
                else:
                    note("accepted", message_id)
                    self.reply("250 2.0.0 accepted")
                sender, recipients = False, 0
            elif verb == "RSET":
                sender, recipients = False, 0
                self.reply("250 2.0.0 ok")
            elif verb == "NOOP":
                self.reply("250 2.0.0 ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 bye")
                return
            else:
                self.reply("502 5.5.2 not implemented")

    def read_data(self):
        """The message up to <CRLF>.<CRLF>, dot-unstuffed; None when the sender went away."""
        lines = []
        while True:
            line = self.rfile.readline(1 << 20)
            if not line:
                return None
            if line == b".\r\n":
                return b"".join(lines)
            if line.startswith(b"."):
                line = line[1:]
            lines.append(line)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 64


def main():
    global record, defer_rate
    args = sys.argv[1:]
    host, port, record_file = args[0], int(args[1]), args[2]
    options = dict(zip(args[3::2], args[4::2]))
    defer_rate = float(options.get("--defer-rate", "0"))
    rng.seed(options.get("--seed", "1"))
    record = open(record_file, "a", encoding="utf-8")
    with Server((host, port), Session) as server:
        print(f"listening on {host}:{port}, defer rate {defer_rate}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()

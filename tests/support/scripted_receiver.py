#!/usr/bin/env python3
"""An SMTP receiver that misbehaves on request and records everything a sender does to it.

Usage: scripted_receiver.py --log FILE --listen HOST:PORT [--listen HOST:PORT ...] [options]

Speaks ESMTP (EHLO/HELO, PIPELINING, 8BITMIME, SIZE, ENHANCEDSTATUSCODES, STARTTLS when given a
certificate, MAIL, RCPT, DATA, RSET, NOOP, QUIT), one thread per connection, on every --listen
address. Options:

  --tls CERT:KEY          offer STARTTLS with this certificate (also the one sent without SNI)
  --sni NAME=CERT:KEY     present this certificate when the client's SNI is NAME (repeatable)
  --refuse-sni NAME       abort the handshake with an unrecognized_name alert for SNI NAME
  --tls-abort             answer STARTTLS with 220, then abort the handshake with a fatal
                          handshake_failure alert instead of negotiating
  --greeting REPLY        greet with REPLY (e.g. "421 4.3.2 busy") instead of 220, then close
  --reply STAGE=REPLY     answer STAGE (mail, rcpt, data, dot) with REPLY
  --rcpt-reply ADDR=REPLY answer RCPT TO:<ADDR> with REPLY
  --reset-in-data         reset the connection (TCP RST) after the first line of content
  --misbehave N           the scripted misbehaviour applies N times only, then the receiver
                          behaves: --greeting to the first N sessions, --reply, --rcpt-reply
                          and --reset-in-data to the first N transactions (counted at MAIL,
                          over all sessions, so a sender reusing a session sees the change)
                          (default: always)

The log gets one line per event, written and flushed as it happens: the event name, then
`key=value` fields with percent-encoded values. Events: `ready` (listening), `connect`,
`command`, `tls` (handshake done: sni, version), `tls-failed`, `tls-aborted`, `message`
(accepted at the end of DATA: mail_from, rcpt, tls, sni, file with the content), `reset`,
`close`.
"""

import argparse
import itertools
import os
import socket
import ssl
import struct
import sys
import threading
import urllib.parse

# A TLS record carrying a fatal handshake_failure alert (RFC 8446 6, 6.2).
HANDSHAKE_FAILURE_ALERT = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])

log_lock = threading.Lock()
session_numbers = itertools.count(1)
transaction_numbers = itertools.count(1)
message_numbers = itertools.count(1)


class Settings:
    def __init__(self, args):
        self.log_path = args.log
        self.message_dir = os.path.join(os.path.dirname(os.path.abspath(args.log)),
                                        os.path.basename(args.log) + ".messages")
        os.makedirs(self.message_dir, exist_ok=True)
        self.tls_abort = args.tls_abort
        self.greeting = args.greeting
        self.replies = dict(split_pair(r, "=") for r in args.reply)
        self.rcpt_replies = {k.lower(): v for k, v in (split_pair(r, "=") for r in args.rcpt_reply)}
        self.reset_in_data = args.reset_in_data
        self.misbehave = args.misbehave
        self.refuse_sni = {name.lower() for name in args.refuse_sni}
        self.tls = None
        self.sni_contexts = {}
        if args.tls:
            self.tls = server_context(args.tls)
            for entry in args.sni:
                name, pair = split_pair(entry, "=")
                self.sni_contexts[name.lower()] = server_context(pair)
            self.tls.sni_callback = self.choose_certificate

    def choose_certificate(self, tls_socket, server_name, _context):
        tls_socket.sni_seen = server_name
        if server_name is not None and server_name.lower() in self.refuse_sni:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        chosen = self.sni_contexts.get((server_name or "").lower())
        if chosen is not None:
            tls_socket.context = chosen
        return None


def split_pair(text, separator):
    key, found, value = text.partition(separator)
    if not found:
        sys.exit(f"expected KEY{separator}VALUE, got {text!r}")
    return key, value


def server_context(pair):
    certificate, _, key = pair.partition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    return context


def log(settings, event, **fields):
    parts = [event] + [f"{k}={urllib.parse.quote(str(v), safe='')}" for k, v in fields.items()]
    with log_lock:
        with open(settings.log_path, "a", encoding="utf-8") as f:
            f.write(" ".join(parts) + "\n")
            f.flush()


class Session:
    def __init__(self, settings, connection, peer):
        self.settings = settings
        self.connection = connection
        self.peer = f"{peer[0]}:{peer[1]}"
        local = connection.getsockname()
        self.local = f"{local[0]}:{local[1]}"
        self.number = next(session_numbers)
        self.misbehaving = within_limit(settings, self.number)
        self.reader = connection.makefile("rb")
        self.tls_version = None
        self.sni = None
        self.reset_transaction()

    def reset_transaction(self):
        self.mail_from = None
        self.recipients = []

    def event(self, name, **fields):
        log(self.settings, name, session=self.number, local=self.local, peer=self.peer, **fields)

    def send(self, line):
        self.connection.sendall(line.encode("utf-8") + b"\r\n")

    def scripted(self, stage):
        if self.misbehaving:
            return self.settings.replies.get(stage)
        return None

    def run(self):
        self.event("connect")
        if self.misbehaving and self.settings.greeting:
            self.send(self.settings.greeting)
            return
        self.send("220 scripted.test ESMTP scripted receiver")
        while True:
            raw = self.reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.event("command", line=line)
            verb = line.split(" ", 1)[0].upper()
            handler = getattr(self, "on_" + verb.lower(), None)
            if handler is None:
                self.send("500 5.5.2 command not recognized")
            elif handler(line) is False:
                return

    def on_ehlo(self, _line):
        keywords = ["PIPELINING", "8BITMIME", "SIZE 52428800", "ENHANCEDSTATUSCODES"]
        if self.settings.tls is not None and self.tls_version is None:
            keywords.append("STARTTLS")
        self.send("250-scripted.test")
        for keyword in keywords[:-1]:
            self.send("250-" + keyword)
        self.send("250 " + keywords[-1])

    def on_helo(self, _line):
        self.send("250 scripted.test")

    def on_starttls(self, _line):
        if self.settings.tls is None or self.tls_version is not None:
            self.send("502 5.5.1 STARTTLS not available")
            return None
        self.send("220 2.0.0 ready to start TLS")
        if self.settings.tls_abort:
            self.connection.settimeout(5)
            try:
                self.connection.recv(16384)
            except OSError:
                pass
            self.connection.sendall(HANDSHAKE_FAILURE_ALERT)
            self.event("tls-aborted")
            return False
        try:
            tls = self.settings.tls.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError) as error:
            self.event("tls-failed", error=error)
            return False
        self.connection = tls
        self.reader = tls.makefile("rb")
        self.tls_version = tls.version()
        self.sni = getattr(tls, "sni_seen", None)
        self.event("tls", version=self.tls_version, sni=self.sni or "")
        self.reset_transaction()
        return None

    def on_mail(self, line):
        self.misbehaving = within_limit(self.settings, next(transaction_numbers))
        reply = self.scripted("mail")
        if reply is not None:
            self.send(reply)
            return
        self.mail_from = mailbox(line)
        self.recipients = []
        self.send("250 2.1.0 sender ok")

    def on_rcpt(self, line):
        if self.mail_from is None:
            self.send("503 5.5.1 MAIL first")
            return
        recipient = mailbox(line)
        reply = None
        if self.misbehaving:
            reply = self.settings.rcpt_replies.get(recipient.lower())
        if reply is None:
            reply = self.scripted("rcpt")
        if reply is not None:
            self.send(reply)
            return
        self.recipients.append(recipient)
        self.send("250 2.1.5 recipient ok")

    def on_data(self, _line):
        if not self.recipients:
            self.send("554 5.5.1 no valid recipients")
            return None
        reply = self.scripted("data")
        if reply is not None:
            self.send(reply)
            self.reset_transaction()
            return None
        self.send("354 end data with <CR><LF>.<CR><LF>")
        lines = []
        while True:
            raw = self.reader.readline()
            if not raw:
                return False
            if raw == b".\r\n":
                break
            if self.misbehaving and self.settings.reset_in_data:
                self.event("reset", after_bytes=len(raw))
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
                return False
            lines.append(raw[1:] if raw.startswith(b"..") else raw)
        reply = self.scripted("dot")
        if reply is not None:
            self.send(reply)
            self.reset_transaction()
            return None
        number = next(message_numbers)
        path = os.path.join(self.settings.message_dir, f"{number:05}.eml")
        with open(path, "wb") as f:
            f.write(b"".join(lines))
        self.event("message", mail_from=self.mail_from, rcpt=",".join(self.recipients),
                   tls=self.tls_version or "none", sni=self.sni or "", file=path)
        self.send(f"250 2.0.0 queued as {number}")
        self.reset_transaction()
        return None

    def on_rset(self, _line):
        self.reset_transaction()
        self.send("250 2.0.0 reset")

    def on_noop(self, _line):
        self.send("250 2.0.0 ok")

    def on_quit(self, _line):
        self.send("221 2.0.0 bye")
        return False


def within_limit(settings, number):
    return settings.misbehave is None or number <= settings.misbehave


def mailbox(line):
    start, end = line.find("<"), line.find(">")
    return line[start + 1:end] if 0 <= start < end else ""


def serve_connection(settings, connection, peer):
    session = Session(settings, connection, peer)
    try:
        session.run()
    except (OSError, ssl.SSLError) as error:
        session.event("error", error=error)
    finally:
        try:
            session.connection.close()
        except OSError:
            pass
        session.event("close")


def accept_loop(settings, listener):
    while True:
        connection, peer = listener.accept()
        connection.settimeout(60)
        threading.Thread(target=serve_connection, args=(settings, connection, peer),
                         daemon=True).start()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--listen", action="append", required=True)
    parser.add_argument("--tls")
    parser.add_argument("--sni", action="append", default=[])
    parser.add_argument("--refuse-sni", action="append", default=[])
    parser.add_argument("--tls-abort", action="store_true")
    parser.add_argument("--greeting")
    parser.add_argument("--reply", action="append", default=[])
    parser.add_argument("--rcpt-reply", action="append", default=[])
    parser.add_argument("--reset-in-data", action="store_true")
    parser.add_argument("--misbehave", type=int)
    args = parser.parse_args()
    settings = Settings(args)

    listeners = []
    for address in args.listen:
        host, _, port = address.rpartition(":")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, int(port)))
        listener.listen(128)
        listeners.append(listener)
    for listener in listeners[1:]:
        threading.Thread(target=accept_loop, args=(settings, listener), daemon=True).start()
    log(settings, "ready", listen=",".join(args.listen))
    accept_loop(settings, listeners[0])


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Drives a secure-only receiver with smtplib: MAIL, RCPT and DATA in plaintext, then STARTTLS
and the same transaction again, on one connection.

Usage: sor_client.py HOST PORT FROM TO SUBJECT
Prints one line per step, "STEP CODE TEXT", for the test to check.
"""

import smtplib
import ssl
import sys


def report(step, reply):
    code, text = reply
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    print(step, code, " ".join(text.split()), flush=True)


def message(sender, recipient, subject):
    return (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@client.test>\r\n\r\nbody of {subject}\r\n"
    )


def main():
    host, port, sender, recipient, subject = sys.argv[1:6]
    smtp = smtplib.SMTP(host, int(port), local_hostname="client.test", timeout=20)
    report("ehlo-plain", smtp.ehlo())
    report("mail-plain", smtp.mail(sender))
    report("rcpt-plain", smtp.rcpt(recipient))
    code, text = smtp.docmd("DATA")
    report("data-plain", (code, text))
    if code == 354:
        # Only reached if the receiver wrongly accepted DATA in plaintext.
        smtp.send(message(sender, recipient, subject + "-plaintext").encode() + b".\r\n")
        report("data-plain-end", smtp.getreply())

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    report("starttls", smtp.starttls(context=context))
    print("tls-version", 0, smtp.sock.version(), flush=True)
    report("ehlo-tls", smtp.ehlo())
    report("mail-tls", smtp.mail(sender))
    report("rcpt-tls", smtp.rcpt(recipient))
    try:
        report("data-tls", smtp.data(message(sender, recipient, subject)))
    except smtplib.SMTPDataError as e:
        report("data-tls", (e.smtp_code, e.smtp_error))
    smtp.quit()


if __name__ == "__main__":
    main()

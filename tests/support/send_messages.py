#!/usr/bin/env python3
"""Sends COUNT messages, one transaction each, over one plaintext SMTP session.

Usage: send_messages.py HOST PORT FROM TO COUNT SUBJECT_PREFIX
Each message's Subject is SUBJECT_PREFIX-<n>. Exits non-zero if any transaction is refused.
"""

import smtplib
import sys


def main():
    host, port, sender, recipient, count, prefix = sys.argv[1:7]
    with smtplib.SMTP(host, int(port), local_hostname="client.test", timeout=20) as smtp:
        for n in range(int(count)):
            subject = f"{prefix}-{n}"
            body = (
                f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: {subject}\r\n"
                f"Message-ID: <{subject}@client.test>\r\n\r\nmessage {n}\r\n"
            )
            smtp.sendmail(sender, [recipient], body)
    print("sent", count)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Instructions secmx spends per 1,000 messages, counted by callgrind: stable on a noisy machine.

secmx runs on one core (`workers = 1`) under valgrind's callgrind, with the benchmark's
configuration (durable spool, mail for the benchmark domain relayed by route to `smtp-sink`).
`secmx-load` sends a warm-up batch first; once the sink holds it, the counters are zeroed,
the measured batch is sent, and the counters are dumped once the sink holds every message of
it and the spool has had a moment to write the completion records. Only user-space
instructions are counted: system calls cost what they cost in the kernel, which callgrind does
not see (`--syscalls` counts them with strace in a second, uninstrumented run).

    bench/profile.py                                  # 1 KiB, 50 sessions, plaintext
    bench/profile.py --size 65536 --messages 500
    bench/profile.py --starttls
    bench/profile.py --mode handshake --duration 20   # per 1,000 STARTTLS handshakes
    bench/profile.py --syscalls                       # plus system calls per message
    bench/profile.py --dns                            # delivery by discovery (local unbound)

Prints the total, the instructions per 1,000 messages (or handshakes), the share of each
area (secmx module, crate or C library) and the costliest functions by their own
instructions. The callgrind file is kept in the output directory for callgrind_annotate.
"""

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from harness import clients, dns, procs, systems
from harness.procs import Registry
from harness.sink import Sink

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("load", "handshake"), default="load")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--messages", type=int, default=2000, help="measured messages")
    p.add_argument("--warmup", type=int, default=200, help="messages before counting")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--reuse", action="store_true",
                   help="one connection per session (default: one per message)")
    p.add_argument("--pipelining", action="store_true")
    p.add_argument("--duration", type=float, default=20.0,
                   help="handshake mode: seconds of handshakes under callgrind")
    p.add_argument("--workers", type=int, default=1,
                   help="secmx cores; valgrind runs one thread at a time, and with more than "
                        "one core sessions time out under it")
    p.add_argument("--dns", action="store_true",
                   help="deliver by SecMX discovery through a local unbound, as the secmx-dns "
                        "rows of the benchmark do, instead of by route")
    p.add_argument("--dns-ttl", type=int, default=3600)
    p.add_argument("--syscalls", action="store_true",
                   help="also count system calls per message with strace (second run)")
    p.add_argument("--top", type=int, default=30, help="functions listed")
    p.add_argument("--secmx", default=os.path.join(REPO, "target", "release", "secmx"))
    p.add_argument("--load", default=os.path.join(REPO, "target", "release", "secmx-load"))
    p.add_argument("--out", help="directory for the callgrind file and summary (default: a "
                                 "new directory under /var/tmp)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p.parse_args(argv)


def progress(text):
    print(text, file=sys.stderr, flush=True)


def load_argv(args, port, messages):
    argv = [args.load, "--server", f"127.0.0.1:{port}", "--sessions", args.sessions,
            "--messages", messages, "--size", args.size, "--from", systems.SENDER,
            "--to", systems.RECIPIENT]
    if args.starttls:
        argv.append("--starttls")
    if not args.reuse:
        argv.append("--connection-per-message")
    if args.pipelining:
        argv.append("--pipelining")
    return [str(a) for a in argv]


def run_load(args, registry, port, messages, workdir, name):
    run = clients.run_client(registry, load_argv(args, port, messages), 3600, workdir, name)
    summary = clients.parse_summary(run["stdout"])
    if summary is None or summary["failed"]:
        raise RuntimeError(f"secmx-load failed: {run['stderr'][-300:]} {run['stdout'][-300:]}")
    return summary


def run_handshakes(args, registry, port, duration, workdir):
    run = clients.secmx_load_mode(
        registry, args.load, port, "handshake",
        ["--sessions", args.sessions, "--duration", duration], workdir,
        timeout=duration + 600)
    summary = run["summary"]
    if summary is None or summary["failed"]:
        raise RuntimeError(f"secmx-load failed: {run['stderr']}")
    return summary


def callgrind_control(pid, flag):
    out = subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0 or "OK" not in out.stdout:
        raise RuntimeError(f"callgrind_control {flag}: {out.stdout}{out.stderr}")


def start_secmx(args, registry, workdir, sink_port, tls_pair, wrapper):
    port = procs.free_port()
    config = os.path.join(workdir, "secmx.toml")
    outbound = {"max_connections_per_domain": 20, "max_messages_per_connection": 100}
    nameserver_port = None
    if args.dns:
        unbound_dir = os.path.join(workdir, "unbound")
        os.makedirs(unbound_dir, exist_ok=True)
        nameserver_port = dns.Unbound(registry, unbound_dir, systems.RECIPIENT_DOMAIN,
                                      args.dns_ttl).port
    with open(config, "w") as f:
        f.write(systems.secmx_config(os.path.join(workdir, "data"), port, sink_port, tls_pair,
                                     outbound, workers=args.workers,
                                     nameserver_port=nameserver_port))
    log = open(os.path.join(workdir, "secmx.log"), "wb")
    proc = registry.start(wrapper + [args.secmx, "serve", "--config", config],
                          stdout=log, stderr=log)
    procs.wait_port(port, 120, proc=proc)
    return proc, port


def settle(sink, count, seconds):
    if sink.wait_messages(count, 600) is None:
        raise RuntimeError(f"the sink got {sink.messages} of {count} messages")
    time.sleep(seconds)


def measure_instructions(args, registry, workdir, tls_pair):
    """One callgrind run; returns (units counted, callgrind file)."""
    out_file = os.path.join(workdir, "callgrind.out")
    sink = Sink(registry, procs.free_port())
    wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
               "--dump-instr=no"]
    proc, port = start_secmx(args, registry, workdir, sink.port, tls_pair, wrapper)
    try:
        if args.mode == "handshake":
            run_handshakes(args, registry, port, 2.0, workdir)
            callgrind_control(proc.pid, "-z")
            units = run_handshakes(args, registry, port, args.duration, workdir)["handshakes"]
            time.sleep(2)
        else:
            if args.warmup:
                run_load(args, registry, port, args.warmup, workdir, "warmup")
                settle(sink, args.warmup, 3)
            callgrind_control(proc.pid, "-z")
            before = sink.messages
            units = run_load(args, registry, port, args.messages, workdir, "load")["accepted"]
            settle(sink, before + units, 3)
        callgrind_control(proc.pid, "-d")
    finally:
        # secmx waits for SIGTERM in a thread of its own, which valgrind does not run
        # reliably; nothing of the run is needed any more.
        proc.kill()
        proc.wait()
        sink.stop()
    dumps = sorted(f for f in os.listdir(workdir) if f.startswith("callgrind.out."))
    if not dumps:
        raise RuntimeError("callgrind wrote no dump")
    return units, os.path.join(workdir, dumps[-1])


def measure_syscalls(args, registry, workdir, tls_pair):
    """System calls per message of every thread, counted by strace -c in an uninstrumented run
    (the warm-up batch is counted too, so it is sent as part of the measured one)."""
    sink = Sink(registry, procs.free_port())
    summary = os.path.join(workdir, "strace.txt")
    wrapper = ["strace", "-f", "-c", "-o", summary]
    proc, port = start_secmx(args, registry, workdir, sink.port, tls_pair, wrapper)
    try:
        units = run_load(args, registry, port, args.messages, workdir, "load-strace")["accepted"]
        settle(sink, units, 2)
    finally:
        # secmx stops on SIGTERM, and strace writes its table once secmx has exited.
        for child in procs.children(proc.pid):
            os.kill(child, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sink.stop()
    calls = {}
    with open(summary) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                count = int(fields[3])
                calls[fields[-1]] = count
    return units, calls


NAME = re.compile(r"^\((\d+)\)(?: (.*))?$")


def self_costs(path):
    """Own instructions per function (exclusive cost) and the summary total of a callgrind
    file (name compression, inlined-file switches and call lines handled)."""
    names = {}
    objects = {}
    costs = collections.Counter()
    total = None
    current = None
    skip_next = False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            if skip_next:
                skip_next = False
                continue
            head = line[0]
            if head.isdigit() or head in "+-*":
                if current is not None:
                    parts = line.split()
                    if len(parts) >= 2:
                        costs[current] += int(parts[1])
                continue
            key, _, value = line.partition("=")
            if key in ("fn", "cfn"):
                found = NAME.match(value)
                if found:
                    number, name = found.groups()
                    if name is not None:
                        names[number] = name
                    if key == "fn":
                        current = (names.get(number, value), objects.get("current"))
            elif key in ("ob", "cob"):
                found = NAME.match(value)
                if found:
                    number, name = found.groups()
                    if name is not None:
                        objects[number] = name
                    if key == "ob":
                        objects["current"] = objects.get(number, value)
            elif key == "calls":
                skip_next = True
            elif line.startswith("summary:"):
                total = int(line.split()[1])
    return costs, total


def area(function, obj):
    """Where a function's own instructions are spent: a secmx module, a crate, or a library."""
    name = function.lstrip("<&*( ").replace("dyn ", "")
    if name.startswith("secmx::"):
        parts = name.split("::")
        return "::".join(parts[:2]) if len(parts) > 2 else "secmx"
    if re.match(r"_?mi_|mi_", name):
        return "mimalloc"
    crate = re.match(r"([a-z_][a-z0-9_]*)::", name)
    if crate:
        return crate.group(1)
    base = os.path.basename(obj or "")
    if "libc.so" in base:
        if "memset" in name or "memcpy" in name or "memmove" in name:
            return "libc mem*"
        return "libc"
    return base or "?"


def report(args, units, callgrind_file, syscalls):
    costs, total = self_costs(callgrind_file)
    total = total or sum(costs.values())
    unit = "handshakes" if args.mode == "handshake" else "messages"
    per_1000 = 1000.0 * total / units if units else 0.0
    areas = collections.Counter()
    for (function, obj), cost in costs.items():
        areas[area(function, obj)] += cost
    summary = {
        "mode": args.mode,
        "size": args.size,
        "sessions": args.sessions,
        "starttls": args.starttls,
        "reuse": args.reuse,
        "units": units,
        "unit": unit,
        "instructions": total,
        "instructions_per_1000": per_1000,
        "callgrind_file": callgrind_file,
        "areas": {k: v for k, v in areas.most_common()},
        "top": [{"function": f, "instructions": c} for (f, _), c in costs.most_common(args.top)],
    }
    if syscalls is not None:
        s_units, calls = syscalls
        summary["syscalls_per_message"] = {
            name: count / s_units for name, count in sorted(calls.items(), key=lambda kv: -kv[1])
        }
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print(f"{units} {unit}: {total:,} instructions, {per_1000:,.0f} per 1,000 {unit} "
          f"({per_1000 / 1000:,.0f} per {unit[:-1]})")
    print(f"\nby area (own instructions per {unit[:-1]}):")
    for name, cost in areas.most_common(20):
        print(f"  {cost / units:>12,.0f}  {100.0 * cost / total:5.1f} %  {name}")
    print(f"\ncostliest functions (own instructions per {unit[:-1]}):")
    for (function, _), cost in costs.most_common(args.top):
        print(f"  {cost / units:>12,.0f}  {100.0 * cost / total:5.1f} %  {function[:150]}")
    if syscalls is not None:
        print(f"\nsystem calls per {unit[:-1]} (strace -f -c, uninstrumented run):")
        for name, per in list(summary["syscalls_per_message"].items())[:15]:
            print(f"  {per:>8.2f}  {name}")
    print(f"\ncallgrind file: {callgrind_file}")


def main(argv):
    args = parse_args(argv)
    for tool in ["valgrind", "callgrind_control", "smtp-sink", "openssl"] + (
            ["strace"] if args.syscalls else []) + (["unbound"] if args.dns else []):
        if shutil.which(tool) is None:
            sys.exit(f"profile: {tool} not found (apt-get install valgrind postfix strace)")
    registry = Registry()
    base = args.out or tempfile.mkdtemp(prefix="secmx-profile-", dir="/var/tmp")
    os.makedirs(base, exist_ok=True)
    try:
        tls_pair = systems.make_tls_pair(registry, base)
        workdir = os.path.join(base, "callgrind")
        os.makedirs(workdir, exist_ok=True)
        progress(f"profile: secmx under callgrind, work directory {workdir}")
        units, callgrind_file = measure_instructions(args, registry, workdir, tls_pair)
        syscalls = None
        if args.syscalls and args.mode == "load":
            workdir = os.path.join(base, "strace")
            os.makedirs(workdir, exist_ok=True)
            syscalls = measure_syscalls(args, registry, workdir, tls_pair)
        report(args, units, callgrind_file, syscalls)
    finally:
        registry.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

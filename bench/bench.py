#!/usr/bin/env python3
"""secmx load benchmark: ceiling, secmx and Postfix side by side on one machine, one run.

Usually started through bench/run.sh, which installs what is needed and builds secmx first.
See bench/README.md for what is measured and how.
"""

import argparse
import atexit
import datetime
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile

import charts
from harness import report, runs, systems
from harness.procs import Registry

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def default_messages(size, sessions):
    """Enough messages for a run of several seconds through a durable MTA on a small machine."""
    base = 1000 if size <= 4096 else 300
    return base * (5 if sessions > 1 else 1)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true",
                   help="seconds: tiny counts, every system once, no thresholds")
    p.add_argument("--repeat", type=int, help="runs per row and system (default 3; smoke 1)")
    p.add_argument("--systems", default="ceiling,secmx,secmx-dns,postfix",
                   help="any of ceiling, secmx, secmx-dns (secmx delivering by SecMX discovery "
                        "through a local unbound), postfix")
    p.add_argument("--baseline", metavar="BINARY",
                   help="another secmx build, measured as system secmx-before in the same run "
                        "(by route, like secmx) for a before/after comparison")
    p.add_argument("--dns-ttl", type=int, default=1,
                   help="secmx-dns: TTL in seconds of the benchmark domain's records")
    p.add_argument("--sizes", default="1024,65536", help="message payload sizes in bytes")
    p.add_argument("--sessions", default="1,50", help="concurrent sessions")
    p.add_argument("--ingress", default="plain,starttls")
    p.add_argument("--messages", type=int, help="messages per run (default: by row)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the default counts")
    p.add_argument("--reuse", action="store_true",
                   help="one connection per session for many messages (default: one per "
                        "message, as smtp-source does)")
    p.add_argument("--pipelining", action="store_true",
                   help="secmx-load pipelines MAIL/RCPT/DATA")
    p.add_argument("--plain-client", choices=("smtp-source", "secmx-load"),
                   default="smtp-source", help="client for plaintext rows")
    p.add_argument("--load-executors", type=int, default=1,
                   help="threads secmx-load spreads its sessions over")
    p.add_argument("--max-connections-per-domain", type=int, default=20,
                   help="secmx outbound setting (Postfix's default destination concurrency "
                        "is 20)")
    p.add_argument("--max-messages-per-connection", type=int, default=100)
    p.add_argument("--no-extras", action="store_true",
                   help="skip the handshake and idle-session measurements")
    p.add_argument("--extras-only", action="store_true")
    p.add_argument("--handshake-sessions", type=int, default=50)
    p.add_argument("--handshake-seconds", type=float, default=5.0)
    p.add_argument("--idle-sessions", type=int, default=10000)
    p.add_argument("--idle-hold", type=float, default=5.0)
    p.add_argument("--secmx", default=os.path.join(REPO, "target", "release", "secmx"))
    p.add_argument("--load", default=os.path.join(REPO, "target", "release", "secmx-load"))
    p.add_argument("--results", help="directory for the results file (default bench/results; "
                                     "smoke: the work directory)")
    p.add_argument("--chart", help="SVG chart path (default docs/benchmarks.svg; smoke: none)")
    p.add_argument("--work", default="/var/tmp", help="parent of the temporary work directory "
                   "(the spools live there: use a disk, not tmpfs)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--postfix-log", action="store_true", help="Postfix logs to a file")
    p.add_argument("--client-timeout", type=float, default=900.0)
    p.add_argument("--note", help="a line quoted at the top of the results file")
    args = p.parse_args(argv)

    if args.smoke:
        args.repeat = args.repeat or 1
        args.sizes = "1024,65536"
        args.messages = args.messages or 20
        args.handshake_sessions, args.handshake_seconds = 2, 1.0
        args.idle_sessions, args.idle_hold = 200, 1.0
    args.repeat = args.repeat or 3
    args.systems = [s for s in args.systems.split(",") if s]
    if args.baseline and "secmx-before" not in args.systems:
        args.systems.insert(args.systems.index("secmx") if "secmx" in args.systems else 0,
                            "secmx-before")
    return args


def build_rows(args):
    if args.smoke:
        # Every system once, both ingress kinds, both sizes, a little concurrency.
        return [runs.Row(1024, 2, False, args.messages), runs.Row(65536, 2, True, args.messages)]
    rows = []
    for ingress in args.ingress.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for sessions in (int(s) for s in args.sessions.split(",")):
                count = args.messages or max(10, int(default_messages(size, sessions) * args.scale))
                rows.append(runs.Row(size, sessions, ingress == "starttls", count))
    return rows


def check_tools(args):
    needed = ["smtp-source", "smtp-sink", "openssl"]
    if "postfix" in args.systems:
        needed.append("postfix")
    if "secmx-dns" in args.systems:
        needed.append("unbound")
    missing = [t for t in needed if shutil.which(t) is None]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)} (bench/run.sh installs them)")
    if "postfix" in args.systems and os.geteuid() != 0:
        sys.exit("bench: a private Postfix instance must be started as root")
    uses_secmx = any(s.startswith("secmx") for s in args.systems)
    binaries = [args.load] + ([args.secmx] if uses_secmx else [])
    if "secmx-before" in args.systems:
        if not args.baseline:
            sys.exit("bench: secmx-before needs --baseline BINARY")
        binaries.append(args.baseline)
    for binary in binaries:
        if not os.access(binary, os.X_OK):
            sys.exit(f"bench: {binary} not built (cargo build --release --bin secmx "
                     "--bin secmx-load)")


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def git_commit():
    out = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def progress(text):
    print(text, file=sys.stderr, flush=True)


def describe_load(r):
    if r["error"] and not r.get("accepted"):
        return f"FAILED: {r['error'].splitlines()[0]}"
    e2e = f"{r['e2e_rate']:.0f}" if r.get("e2e_rate") else "–"
    cpu = f", cpu {r['cpu_per_1000']:.2f} s/1k" if r.get("cpu_per_1000") is not None else ""
    status = "" if r["ok"] else f"  PROBLEM: {r['error'].splitlines()[0]}"
    return (f"accepted {r['accept_rate']:.0f}/s, end-to-end {e2e}/s{cpu}, "
            f"lost {r['lost']}{status}")


def main(argv):
    args = parse_args(argv)
    check_tools(args)
    fd_limit = raise_fd_limit()
    if args.idle_sessions + 100 > fd_limit:
        progress(f"bench: open-file limit {fd_limit}: idle sessions cut to {fd_limit - 200}")
        args.idle_sessions = fd_limit - 200

    registry = Registry()
    os.makedirs(args.work, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="secmx-bench-", dir=args.work)
    os.chmod(workdir, 0o755)  # Postfix's unprivileged processes reach their queue through it

    def cleanup():
        registry.stop_all()
        systems.stop_stray_postfix(workdir)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))

    tls_pair = systems.make_tls_pair(registry, workdir)
    outbound = {"max_connections_per_domain": args.max_connections_per_domain,
                "max_messages_per_connection": args.max_messages_per_connection}
    available = {
        "ceiling": systems.Ceiling(),
        "secmx": systems.Secmx(args.secmx, outbound),
        "secmx-dns": systems.SecmxDns(args.secmx, outbound, args.dns_ttl),
        "secmx-before": systems.Secmx(args.baseline, outbound, name="secmx-before"),
        "postfix": systems.Postfix(log_to_file=args.postfix_log),
    }
    chosen = [available[name] for name in args.systems]
    ctx = runs.Context(registry, workdir, tls_pair, args.load, args)
    rows = [] if args.extras_only else build_rows(args)

    load_results = []
    plan = [(rep, row, system) for rep in range(1, args.repeat + 1) for row in rows
            for system in (chosen if rep % 2 else list(reversed(chosen)))
            if system.name != "ceiling" or not row.tls]
    for n, (rep, row, system) in enumerate(plan, 1):
        result = runs.load_run(ctx, system, row, rep)
        load_results.append(result)
        progress(f"[{n}/{len(plan)}] {system.name:8} {row.key:16} run {rep}: "
                 f"{describe_load(result)}")

    handshakes, idle = [], []
    if not args.no_extras:
        tls_systems = [s for s in chosen if s.name in ("secmx-before", "secmx", "postfix")]
        for rep in range(1, args.repeat + 1):
            for system in tls_systems if rep % 2 else list(reversed(tls_systems)):
                h = runs.handshake_run(ctx, system, rep)
                handshakes.append(h)
                progress(f"handshakes {system.name:8} run {rep}: " + (
                    f"{h['handshakes_per_s']:.0f}/s, {h['handshakes_per_cpu_s']:.0f} per "
                    f"CPU-second" if h["ok"] else f"FAILED: {h['error']}"))
        for name in ("secmx-before", "secmx"):
            if name not in args.systems:
                continue
            i = runs.idle_run(ctx, available[name])
            idle.append(i)
            progress(f"idle sessions {name}: " + (
                f"{i['held']} held, {i['rss_held_kb'] / 1024:.1f} MiB resident "
                f"({i['kb_per_session']:.1f} KiB per session)" if i["ok"]
                else f"FAILED: {i['error']}"))

    now = datetime.datetime.now().astimezone()
    meta = {
        "date": now.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": report.machine(),
        "filesystem": report.filesystem(workdir),
        "workdir": workdir,
        "postfix_version": systems.Postfix.version(),
        "commit": git_commit(),
        "secmx": available["secmx-dns" if "secmx-dns" in args.systems else "secmx"].describe(),
        "baseline": args.baseline,
        "ingress": (
            ("one connection per session, reused" if args.reuse else
             "one connection per message") + "; plaintext rows: " + args.plain_client +
            "; STARTTLS rows: secmx-load" + (" with pipelining" if args.pipelining else "")),
        "repeat": args.repeat,
        "invocation": shlex.join(["bench/bench.py"] + argv),
        "note": args.note or ("smoke run: tiny counts, not a measurement" if args.smoke else ""),
        "smoke": args.smoke,
    }
    summary = report.summarize(load_results)
    row_order = [row.key for row in rows]
    configs = {}
    if available["secmx"].config_text:
        configs["secmx.toml (last run)"] = available["secmx"].config_text
    if available["secmx-dns"].config_text:
        configs["secmx.toml of secmx-dns (last run)"] = available["secmx-dns"].config_text
        configs["unbound.conf of secmx-dns (last run)"] = available["secmx-dns"].unbound_config
    if available["postfix"].main_cf:
        configs["Postfix main.cf (last run)"] = available["postfix"].main_cf
        configs["Postfix master.cf (last run)"] = available["postfix"].master_cf

    results_dir = args.results or (workdir if args.smoke else os.path.join(HERE, "results"))
    os.makedirs(results_dir, exist_ok=True)
    base = os.path.join(results_dir, now.strftime("%Y-%m-%d-%H%M%S") + ("-smoke" if args.smoke
                                                                         else ""))
    report.write(base, meta, summary, row_order, load_results, handshakes, idle,
                 registry.commands, configs)
    progress(f"results: {base}.md")
    if args.smoke:
        print(open(base + ".md").read())
    chart = args.chart or (None if args.smoke else os.path.join(REPO, "docs", "benchmarks.svg"))
    if chart and any(r["ok"] for r in load_results):
        with open(base + ".json") as f:
            svg = charts.draw(json.load(f))
        with open(chart, "w") as f:
            f.write(svg)
        progress(f"chart: {chart}")

    broken = ([r for r in load_results if not r["ok"]] + [h for h in handshakes if not h["ok"]]
              + [i for i in idle if not i["ok"]])
    if broken:
        progress(f"bench: {len(broken)} runs had a problem (see the results file)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Medians over repeats, ratios, and the results file (Markdown, with the raw runs in JSON)."""

import json
import os
import platform
import re
import statistics
import subprocess

SYSTEMS = ("ceiling", "secmx-before", "secmx", "secmx-dns", "postfix")
SECMX_SYSTEMS = ("secmx-before", "secmx", "secmx-dns")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def machine():
    info = {"nproc": os.cpu_count(), "kernel": platform.release()}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                info["memory_mib"] = int(line.split()[1]) // 1024
                break
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    info["os"] = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return info


def filesystem(path):
    """The type and device of the filesystem holding `path` (the spools)."""
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", path],
                         capture_output=True, text=True)
    if out.returncode != 0:
        out = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return " ".join(out.stdout.split()) or "unknown"


def summarize(load_runs):
    """Per row and system, the median of every metric over the repeats."""
    rows = {}
    for run in load_runs:
        rows.setdefault(run["row"], {}).setdefault(run["system"], []).append(run)
    summary = {}
    for row, systems in rows.items():
        summary[row] = {}
        for system, runs in systems.items():
            first = runs[0]
            summary[row][system] = {
                "size": first["size"],
                "sessions": first["sessions"],
                "tls": first["tls"],
                "runs": len(runs),
                "ok_runs": sum(1 for r in runs if r["ok"]),
                "lost": sum(r.get("lost", 0) or 0 for r in runs),
                "accepted_total": sum(r.get("accepted", 0) or 0 for r in runs),
                "delivered_total": sum(r.get("delivered", 0) or 0 for r in runs),
            }
            for key in ("accept_rate", "e2e_rate", "p50_ms", "p99_ms", "cpu_per_1000",
                        "peak_pss_kb", "vm_hwm_kb", "msgs_per_sink_session",
                        "client_cpu_percent"):
                summary[row][system][key] = median([r.get(key) for r in runs])
            dns_runs = [r["dns"] for r in runs if r.get("dns")]
            if dns_runs:
                summary[row][system]["dns"] = {
                    "ttl_s": dns_runs[0]["ttl_s"],
                    "runs": len(dns_runs),
                    "max_per_record": max(d["max_per_record"] for d in dns_runs),
                    "within_bound": all(d["within_bound"] for d in dns_runs),
                }
    return summary


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def _num(value, digits=0):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _ratio(value):
    return "–" if value is None else f"{value:.2f}×"


def _mib(kb):
    return None if kb is None else kb / 1024


def _memory(entry):
    """secmx: its VmHWM (one process); Postfix: the peak of its processes' summed PSS."""
    if entry.get("vm_hwm_kb") is not None and entry.get("peak_pss_kb") is not None:
        return entry["peak_pss_kb"], entry["vm_hwm_kb"]
    return entry.get("peak_pss_kb"), None


def markdown(meta, summary, row_order, load_runs, handshakes, idle, commands, configs):
    lines = [f"# secmx load benchmark, {meta['date']}", ""]
    if meta.get("note"):
        lines += [f"> {meta['note']}", ""]
    m = meta["machine"]
    lines += [
        "## Machine and settings", "",
        f"- machine: {m['nproc']} CPUs ({m.get('cpu_model', 'unknown model')}), "
        f"{m.get('memory_mib', '?')} MiB memory, {m.get('os', 'unknown OS')}",
        f"- kernel: {m['kernel']}",
        f"- spool filesystem: {meta['filesystem']} ({meta['workdir']})",
        "- durability: secmx `spool.sync = true` (group commit: records on stable storage "
        f"before the 250); Postfix "
        f"{meta['postfix_version']} default queue (fsync before 250)",
        f"- secmx: commit {meta['commit']}; {meta['secmx']}",
    ]
    if meta.get("baseline"):
        lines.append(f"- secmx-before: {meta['baseline']}, configured as secmx")
    lines += [
        f"- ingress: {meta['ingress']}",
        f"- repeats: {meta['repeat']} per row and system, interleaved; medians quoted",
        f"- invocation: `{meta['invocation']}`",
        "",
        "## Throughput, latency, CPU and memory (medians)", "",
        "Accepted: messages / time until the client had its last 250. End-to-end: messages / "
        "time until the sink had the last one. Latency: end of data to 250, per message "
        "(measured by secmx-load only: STARTTLS rows, or every row with "
        "`--plain-client secmx-load`). CPU: the system's processes, user+system, per 1,000 "
        "messages. Memory: peak PSS summed over the system's processes (secmx: VmHWM in "
        "brackets). Msgs/conn: messages per connection the sink saw.", "",
        "| row | system | accepted msg/s | end-to-end msg/s | p50 ms | p99 ms | CPU s/1k msgs "
        "| peak memory MiB | msgs/conn | lost | client CPU % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in row_order:
        for system in SYSTEMS:
            e = summary.get(row, {}).get(system)
            if e is None:
                continue
            pss, hwm = _memory(e)
            memory = _num(_mib(pss), 1) + (f" ({_num(_mib(hwm), 1)})" if hwm else "")
            lines.append(
                f"| {row} | {system} | {_num(e['accept_rate'])} | {_num(e['e2e_rate'])} "
                f"| {_num(e['p50_ms'], 2)} | {_num(e['p99_ms'], 2)} "
                f"| {_num(e['cpu_per_1000'], 2)} | {memory} "
                f"| {_num(e['msgs_per_sink_session'], 1)} | {e['lost']} "
                f"| {_num(e['client_cpu_percent'])} |"
            )

    lines += [
        "", "## Ratios (medians)", "",
        "Throughput ratios above 1 favour secmx; CPU and memory ratios below 1 favour secmx.", "",
        "secmx-dns rows: secmx delivering by SecMX discovery through a local unbound instead "
        "of by route. secmx-before rows (with `--baseline`): another secmx build, by route.",
        "",
        "| row | accepted secmx/postfix | end-to-end secmx/postfix | CPU secmx/postfix "
        "| memory secmx/postfix | accepted secmx/ceiling | end-to-end secmx/ceiling |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in row_order:
        s = summary.get(row, {})
        pf, ce = s.get("postfix"), s.get("ceiling")
        for variant in SECMX_SYSTEMS:
            sx = s.get(variant)
            if sx is None:
                continue
            get = lambda e, k: e.get(k) if e else None  # noqa: E731
            label = row if variant == "secmx" else f"{row} ({variant})"
            lines.append(
                f"| {label} | {_ratio(ratio(get(sx, 'accept_rate'), get(pf, 'accept_rate')))} "
                f"| {_ratio(ratio(get(sx, 'e2e_rate'), get(pf, 'e2e_rate')))} "
                f"| {_ratio(ratio(get(sx, 'cpu_per_1000'), get(pf, 'cpu_per_1000')))} "
                f"| {_ratio(ratio(get(sx, 'peak_pss_kb'), get(pf, 'peak_pss_kb')))} "
                f"| {_ratio(ratio(get(sx, 'accept_rate'), get(ce, 'accept_rate')))} "
                f"| {_ratio(ratio(get(sx, 'e2e_rate'), get(ce, 'e2e_rate')))} |"
            )

    failed = [r for r in load_runs if not r["ok"]]
    total_accepted = sum(r.get("accepted", 0) or 0 for r in load_runs)
    total_lost = sum(r.get("lost", 0) or 0 for r in load_runs)
    lines += [
        "", "## Messages lost", "",
        f"{len(load_runs)} load runs, {total_accepted:,} messages accepted, "
        f"{total_lost} lost (accepted but never at the sink), "
        f"{sum(r.get('duplicates', 0) or 0 for r in load_runs)} delivered twice, "
        f"{len(failed)} runs with a problem.",
    ]
    for r in failed:
        first_line = (r["error"] or "").splitlines()[0] if r["error"] else "unknown"
        lines.append(f"- {r['system']} {r['row']} run {r['rep']}: {first_line}")

    dns_runs = [r for r in load_runs if r.get("dns")]
    if dns_runs:
        ttl = dns_runs[0]["dns"]["ttl_s"]
        lines += [
            "", "## DNS queries (secmx-dns)", "",
            "Queries secmx sent to the local unbound, as unbound logged them (`log-queries: "
            f"yes`), per record, for each run. Every record has a TTL of {ttl} s; at most one "
            "query per record per TTL is allowed: one when the run starts, then one each time "
            "the cached answer has expired (duration ÷ TTL + 1). Coalescing makes concurrent "
            "deliveries share one query; the cache answers the rest.", "",
            "| row | run | duration s | allowed per record | queries per record | within |",
            "| --- | ---: | ---: | ---: | --- | --- |",
        ]
        for r in dns_runs:
            d = r["dns"]
            per_record = ", ".join(f"{x['record']} {x['queries']}" for x in d["records"])
            lines.append(
                f"| {r['row']} | {r['rep']} | {d['duration_s']:.1f} | {d['allowed_per_record']} "
                f"| {per_record or 'none'} | {'yes' if d['within_bound'] else 'NO'} |"
            )

    if handshakes:
        lines += [
            "", "## STARTTLS handshakes (ECDSA P-256 certificate)", "",
            "secmx-load repeats connect, EHLO, STARTTLS, full TLS handshake (no resumption), "
            "EHLO, QUIT. Per core: handshakes per CPU-second of the system's processes.", "",
            "| system | handshakes/s | per core (per CPU-second) | p50 ms | p99 ms "
            "| failed | client CPU % |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for system in ("secmx-before", "secmx", "postfix"):
            runs = [h for h in handshakes if h["system"] == system and h["ok"]]
            if not runs:
                continue
            lines.append(
                f"| {system} | {_num(median([h['handshakes_per_s'] for h in runs]))} "
                f"| {_num(median([h['handshakes_per_cpu_s'] for h in runs]))} "
                f"| {_num(median([h['p50_ms'] for h in runs]), 2)} "
                f"| {_num(median([h['p99_ms'] for h in runs]), 2)} "
                f"| {sum(h['failed'] for h in runs)} "
                f"| {_num(median([h['client_cpu_percent'] for h in runs]))} |"
            )
        for h in handshakes:
            if not h["ok"]:
                lines.append(f"- {h['system']} handshake run {h['rep']}: {h['error']}")

    if idle:
        lines += ["", "## Idle sessions held", ""]
        for i in idle:
            if i["ok"] or i.get("established"):
                lines.append(
                    f"- {i['system']}: {i['established']:,} of {i['sessions']:,} sessions "
                    f"established from {i['source_addresses']} client addresses, "
                    f"{i['held']:,} still answering NOOP after the hold; resident memory "
                    f"{_num(_mib(i['rss_before_kb']), 1)} MiB before, "
                    f"{_num(_mib(i['rss_held_kb']), 1)} MiB while held "
                    f"({_num(i['kb_per_session'], 1)} KiB per session)."
                )
            if not i["ok"]:
                lines.append(f"- {i['system']} idle run: {i['error']}")

    lines += [
        "", "## Commands", "",
        "Every command the run started, in order of first use ($WORK: the work directory, "
        "$RUN: one run's directory under it, $PORT: a free port picked for that run):", "",
        "```",
    ]
    lines += command_shapes(commands, meta["workdir"])
    lines += ["```", ""]
    for name, text in configs.items():
        lines += [f"### {name}", "", "```", text.rstrip(), "```", ""]
    return "\n".join(lines)


def command_shapes(commands, workdir):
    """The distinct commands, in first-use order, with per-run directories and ports replaced
    by placeholders and a count of how often each ran."""
    counts = {}
    for command in commands:
        shape = command.replace(workdir, "$WORK")
        shape = re.sub(r"\$WORK/\d{3}-[^/ ]+", "$RUN", shape)
        shape = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:$PORT", shape)
        counts[shape] = counts.get(shape, 0) + 1
    return [shape + (f"    # ×{n}" if n > 1 else "") for shape, n in counts.items()]


def write(path_base, meta, summary, row_order, load_runs, handshakes, idle, commands, configs):
    with open(path_base + ".json", "w") as f:
        json.dump({"meta": meta, "summary": summary, "row_order": row_order,
                   "load_runs": load_runs, "handshakes": handshakes, "idle": idle}, f, indent=1)
    with open(path_base + ".md", "w") as f:
        f.write(markdown(meta, summary, row_order, load_runs, handshakes, idle, commands,
                         configs))

#!/usr/bin/env python3
"""The markdown table of a finished benchmark run, shared by bench/compare.sh and
bench/amqp.sh: the median of each metric over the runs, two brokers side by side.

    table.py compare OUT RUNS NAME...   # midge against Mosquitto (or midge scraped)
    table.py amqp OUT RUNS NAME...      # midge against RabbitMQ

With PROFILE=1 (bench/compare.sh) each run also left NAME.BROKER.RUN.syscalls (`perf stat -x,`
over 3 s of the run) and NAME.BROKER.RUN.dso (`perf report --sort dso`), and a second table
gives system calls per delivered message and the kernel's share of the broker's CPU.

With FLOOR=1 (bench/compare.sh) the brokers file names two do-nothing relays after the two
brokers; each gets a column and its ratio to the second broker.

OUT holds one JSON report per scenario, broker and run (NAME.BROKER.RUN.json, as
`midge bench --json` writes it, or {"error": ...}), and optionally load.before/load.after.
"""

import json
import pathlib
import re
import statistics
import sys

LABELS = {
    "midge": "midge",
    "mosquitto": "Mosquitto",
    "midge-scraped": "midge scraped every 1 s",
    "rabbitmq": "RabbitMQ",
    "relay": "relay (epoll)",
    "relay-uring": "relay (io_uring)",
}


def load(out, runs, name, broker):
    reports = []
    for run in range(1, runs + 1):
        try:
            r = json.loads((out / f"{name}.{broker}.{run}.json").read_text())
        except Exception as e:
            r = {"error": str(e)}
        reports.append(r)
    return reports


def median(reports, *path):
    values = []
    for r in reports:
        v = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            values.append(v)
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "n/a"


def compare_metrics(name):
    if name.startswith("conn"):
        metrics = [
            ("KiB per connection", ("broker", "kib_per_conn"), 1),
            ("connections/s", ("connections", "per_sec"), 0),
        ]
        if "fanout" in name:
            metrics.append(("fan-out to all, s", ("fanout", "seconds"), 3))
        return metrics
    if name.startswith("latency"):
        return [
            ("p99 latency µs", ("latency_us", "p99"), 0),
            ("p50 latency µs", ("latency_us", "p50"), 0),
        ]
    return [
        ("msgs/s", ("delivered_per_sec",), 0),
        ("broker CPU µs/msg", ("broker", "cpu_us_per_msg"), 2),
        ("broker CPU %", ("broker", "cpu_pct"), 0),
        ("p99 latency µs", ("latency_us", "p99"), 0),
    ]


def amqp_metrics(_name):
    return [
        ("msgs/s delivered", ("delivered_per_sec",), 0),
        ("broker CPU µs/msg", ("broker", "cpu_us_per_msg"), 2),
        ("broker CPU %", ("broker", "cpu_pct"), 0),
        ("p99 latency µs", ("latency_us", "p99"), 0),
        ("p50 latency µs", ("latency_us", "p50"), 0),
    ]


PROFILE_SECONDS = 3  # how long bench/compare.sh's profile() counts


def syscalls_per_message(out, name, broker, run):
    """{call: count per delivered message} of one profiled run, or None."""
    try:
        report = json.loads((out / f"{name}.{broker}.{run}.json").read_text())
        lines = (out / f"{name}.{broker}.{run}.syscalls").read_text().splitlines()
    except (OSError, ValueError):
        return None
    messages = report.get("delivered_per_sec", 0) * PROFILE_SECONDS
    if not messages:
        return None
    calls = {}
    for line in lines:
        fields = line.split(",")
        if line.startswith("#") or len(fields) < 3 or not fields[0].isdigit():
            continue
        event = fields[2]
        call = "all" if event == "raw_syscalls:sys_enter" else event.removeprefix("syscalls:sys_enter_")
        calls[call] = int(fields[0]) / messages
    return calls


def kernel_share(out, name, broker, run):
    """Percent of the broker's CPU samples in the kernel, or None."""
    try:
        text = (out / f"{name}.{broker}.{run}.dso").read_text()
    except OSError:
        return None
    m = re.search(r"([0-9.]+)%\s+\[kernel\.kallsyms\]", text)
    return float(m.group(1)) if m else None


def profile_table(out, runs, names, brokers):
    """System calls per message and the kernel's share, medians over the runs."""
    print()
    print("| scenario | broker | system calls per message | of which | kernel share of CPU |")
    print("| --- | --- | ---: | --- | ---: |")
    for name in names:
        for i, broker in enumerate(brokers):
            per_run = [c for c in (syscalls_per_message(out, name, broker, r) for r in range(1, runs + 1)) if c]
            shares = [k for k in (kernel_share(out, name, broker, r) for r in range(1, runs + 1)) if k is not None]
            calls = {}
            for c in per_run:
                for call, n in c.items():
                    calls.setdefault(call, []).append(n)
            med = {call: statistics.median(v) for call, v in calls.items()}
            detail = ", ".join(f"{call} {n:.2f}" for call, n in sorted(med.items(), key=lambda kv: -kv[1])
                               if call != "all" and n >= 0.005)
            share = f"{statistics.median(shares):.0f} %" if shares else "n/a"
            print(f"| {name if i == 0 else ''} | {LABELS[broker]} | {fmt(med.get('all'), 2)} | {detail or 'n/a'} | {share} |")
    print()
    print(f"System calls: medians over the runs, each counted over {PROFILE_SECONDS} s of its run "
          "and divided by the messages delivered in that time.")


def main():
    style, out, runs, names = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    if style == "compare":
        brokers_file = out / "brokers"
        first, second, *extras = brokers_file.read_text().split() if brokers_file.exists() else ["midge", "mosquitto"]
        metrics_of, generator_column = compare_metrics, True
        # Anomalies name the broker as the run did.
        who = {b: b for b in [first, second, *extras]}
    elif style == "amqp":
        first, second, extras = "midge", "rabbitmq", []
        metrics_of, generator_column = amqp_metrics, False
        who = LABELS
    else:
        sys.exit(f"unknown table style {style!r}: compare or amqp")
    a, b = LABELS[first], LABELS[second]

    rows = []
    for name in names:
        m, q = load(out, runs, name, first), load(out, runs, name, second)
        more = [load(out, runs, name, e) for e in extras]
        errors = [r["error"] for r in m + q + sum(more, []) if "error" in r]
        anomalies = []
        for broker, reports in ((first, m), (second, q), *zip(extras, more)):
            ok = [r for r in reports if "error" not in r]
            lost = sum(r.get("lost", 0) for r in ok)
            dup = sum(r.get("duplicated", 0) for r in ok)
            reordered = sum(r.get("reordered", 0) for r in ok)
            if lost or dup or reordered:
                anomalies.append(f"{who[broker]}: lost {lost}, dup {dup}, reordered {reordered}")
        gen = f"{fmt(median(m, 'generator', 'cpu_pct'))} / {fmt(median(q, 'generator', 'cpu_pct'))}"
        for i, (metric, path, digits) in enumerate(metrics_of(name)):
            x, y = median(m, *path), median(q, *path)
            note = "; ".join(anomalies + [e[:80] for e in errors[:1]]) if i == 0 else ""
            row = [name if i == 0 else "", metric, fmt(x, digits), fmt(y, digits), ratio(x, y)]
            for reports in more:
                z = median(reports, *path)
                row += [fmt(z, digits), ratio(z, y)]
            if generator_column:
                row.append(gen if i == 0 else "")
            rows.append(row + [note])

    extra_heads = "".join(f" {LABELS[e]} | {LABELS[e]}/{b} |" for e in extras)
    extra_rule = " ---: | ---: |" * len(extras)
    if generator_column:
        print(f"| scenario | metric | {a} | {b} | {a}/{b} |{extra_heads} generator CPU % ({a} / {b} runs) | notes |")
        print(f"| --- | --- | ---: | ---: | ---: |{extra_rule} ---: | --- |")
    else:
        print(f"| scenario | metric | {a} | {b} | {a}/{b} | notes |")
        print("| --- | --- | ---: | ---: | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if style == "compare" and any(out.glob("*.syscalls")):
        profile_table(out, runs, names, [first, second, *extras])
    print()
    print(f"Median of {runs} runs; raw JSON reports in {out}.")
    for when in ("before", "after"):
        path = out / f"load.{when}"
        if path.exists():
            print(f"Load {when}: {path.read_text().strip()}")


if __name__ == "__main__":
    main()

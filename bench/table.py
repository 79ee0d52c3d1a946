#!/usr/bin/env python3
"""The markdown table of a finished benchmark run, shared by bench/compare.sh and
bench/amqp.sh: the median of each metric over the runs, two brokers side by side.

    table.py compare OUT RUNS NAME...   # midge against Mosquitto (or midge scraped)
    table.py amqp OUT RUNS NAME...      # midge against RabbitMQ

OUT holds one JSON report per scenario, broker and run (NAME.BROKER.RUN.json, as
`midge bench --json` writes it, or {"error": ...}), and optionally load.before/load.after.
"""

import json
import pathlib
import statistics
import sys

LABELS = {
    "midge": "midge",
    "mosquitto": "Mosquitto",
    "midge-scraped": "midge scraped every 1 s",
    "rabbitmq": "RabbitMQ",
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


def main():
    style, out, runs, names = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    if style == "compare":
        brokers_file = out / "brokers"
        first, second = brokers_file.read_text().split() if brokers_file.exists() else ["midge", "mosquitto"]
        metrics_of, generator_column = compare_metrics, True
        # Anomalies name the broker as the run did.
        who = {first: first, second: second}
    elif style == "amqp":
        first, second = "midge", "rabbitmq"
        metrics_of, generator_column = amqp_metrics, False
        who = LABELS
    else:
        sys.exit(f"unknown table style {style!r}: compare or amqp")
    a, b = LABELS[first], LABELS[second]

    rows = []
    for name in names:
        m, q = load(out, runs, name, first), load(out, runs, name, second)
        errors = [r["error"] for r in m + q if "error" in r]
        anomalies = []
        for broker, reports in ((first, m), (second, q)):
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
            if generator_column:
                row.append(gen if i == 0 else "")
            rows.append(row + [note])

    if generator_column:
        print(f"| scenario | metric | {a} | {b} | {a}/{b} | generator CPU % ({a} / {b} runs) | notes |")
        print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    else:
        print(f"| scenario | metric | {a} | {b} | {a}/{b} | notes |")
        print("| --- | --- | ---: | ---: | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print(f"Median of {runs} runs; raw JSON reports in {out}.")
    for when in ("before", "after"):
        path = out / f"load.{when}"
        if path.exists():
            print(f"Load {when}: {path.read_text().strip()}")


if __name__ == "__main__":
    main()

"""Draw the benchmarks' plots and write docs/benchmarks.md from bench/run.py's JSON.

bench/report.py [--results bench/results.json] [--docs docs]
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first

ROOT = Path(__file__).resolve().parent.parent
LABELS = {
    "front": "through the front (GET /add)",
    "direct": "Celery directly",
    "seed": "seed's front (blocking .get())",
}
GOAL_RATE = 1000
GOAL_FRONT_SHARE = 0.9
GOAL_WAITS = 10000
GOAL_RSS_MB = 200


def _plot(path: Path, title: str, xlabel: str, ylabel: str, lines: list, log_y=False) -> None:
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, xs, ys, style in lines:
        axes.plot(xs, ys, style, label=label)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if log_y:
        axes.set_yscale("log")
    else:
        axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def draw(results: dict, images: Path) -> None:
    images.mkdir(parents=True, exist_ok=True)
    p2 = results["p2"]
    _plot(
        images / "throughput.png",
        "Throughput: trivial add(x, y), answered per second",
        "concurrent clients",
        "tasks answered / s",
        [
            (LABELS[kind], [r["clients"] for r in rows], [r["per_second"] for r in rows], "o-")
            for kind, rows in p2.items()
            if rows
        ],
    )
    lines = []
    for kind, style in (("front", "-"), ("direct", "--")):
        rows = p2[kind]
        for pct, marker in (("p50_ms", "o"), ("p99_ms", "^")):
            lines.append(
                (
                    f"{kind} {pct[:3]}",
                    [r["clients"] for r in rows],
                    [r[pct] for r in rows],
                    marker + style,
                )
            )
    _plot(
        images / "latency.png",
        "Latency of one task, submit to answer",
        "concurrent clients",
        "ms (log scale)",
        lines,
        log_y=True,
    )
    p3 = results["p3"]
    _plot(
        images / "waits-memory.png",
        "One web process holding N awaited requests",
        "concurrent awaited requests",
        "resident memory, MB",
        [
            ("while holding them", [r["waits"] for r in p3], [r["rss_held_mb"] for r in p3], "o-"),
            ("idle, before", [r["waits"] for r in p3], [r["rss_before_mb"] for r in p3], "s--"),
        ],
    )


def _goal(met: bool) -> str:
    return "met" if met else "**not met**"


def page(results: dict) -> str:
    m, p1, p2, p3 = results["machine"], results["p1"], results["p2"], results["p3"]
    best_front = max(p2["front"], key=lambda r: r["per_second"])
    best_direct = max(p2["direct"], key=lambda r: r["per_second"])
    share = best_front["per_second"] / best_direct["per_second"]
    biggest = max(p3, key=lambda r: r["waits"])
    out = [
        "# Benchmarks",
        "",
        "Figures of one `make bench` run on a converged all-in-one lab (`make lab`); the page and",
        "the plots are written by `bench/report.py` from `bench/results.json`. Each P2 row is one",
        "run of 15 s; on this shared machine the same row varies by up to a third from run to",
        "run: compare shapes, not digits.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, kernel {m['kernel']},",
        f"no KVM; the lab host is a Podman container ({m['host_os']}, {m['redis']},",
        f"{m['python']}, `net.core.somaxconn` {m['somaxconn']}). Redis, both worker pools",
        "(default: prefork, 2 children; urgent: 1), beat, the web process and the load",
        f"generator all share those {m['cores']} cores. Run on {m['date']}.",
        "",
        "## Goals",
        "",
        "| goal | measured | |",
        "| --- | --- | --- |",
        f"| ≥ {GOAL_RATE} tasks/s end to end through the front | {best_front['per_second']}/s "
        f"({best_front['clients']} clients) | {_goal(best_front['per_second'] >= GOAL_RATE)} |",
        f"| the front ≥ {GOAL_FRONT_SHARE:.0%} of Celery called directly | {share:.0%} "
        f"({best_direct['per_second']}/s direct) | {_goal(share >= GOAL_FRONT_SHARE)} |",
        f"| {GOAL_WAITS:,} concurrent awaited requests on one web process, all answered | "
        f"{biggest['answered']:,} of {biggest['waits']:,} | "
        f"{_goal(biggest['waits'] >= GOAL_WAITS and biggest['answered'] == biggest['waits'])} |",
        f"| ... with RSS ≤ {GOAL_RSS_MB} MB | {biggest['rss_held_mb']} MB held, "
        f"{biggest['rss_peak_mb']} MB peak | {_goal(biggest['rss_peak_mb'] <= GOAL_RSS_MB)} |",
        "",
        "## P1: a converge that changes nothing",
        "",
        f"`site.yml` again on the converged lab ({p1['tasks']} tasks, 0 changed) against a play",
        "of as many `ping` tasks, the floor any play of that size pays (`bench/rerun.sh`,",
        "farm-bench, runs in turn):",
        "",
        "| | median | min | max |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, key in (("site.yml re-run, wall s", "site_rerun_wall_s"), ("pings, wall s", "pings_wall_s")):
        f = p1[key]
        out.append(f"| {label} | {f['median']} | {f['min']} | {f['max']} |")
    out.append(f"| ratio, pair by pair | {p1['ratio_wall']['median']} | | |")
    out += [
        "",
        "## P2: throughput and latency",
        "",
        "Each client sends its next request as soon as the last is answered (keep-alive HTTP,",
        "or for *direct* one Celery task outstanding per client, result awaited through the",
        "result backend). *CPU %* is each component's share of one core during the run (200 %",
        "= both cores).",
        "",
        "![throughput](benchmarks/throughput.png)",
        "![latency](benchmarks/latency.png)",
        "",
        "| path | clients | answered/s | p50 ms | p90 ms | p99 ms | errors "
        "| CPU %: front / worker main / worker children / redis / journald / load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for kind, rows in p2.items():
        for r in rows:
            cpu = r["cpu_percent"]
            front_cpu = cpu["seed front"] if kind == "seed" else cpu["web"]
            errors = sum(r.get("errors", {}).values()) + sum(r.get("other_statuses", {}).values())
            errors += r.get("failures", 0)
            shares = " / ".join(
                str(cpu[name]) for name in ("worker main", "worker children", "redis", "journald", "load")
            )
            out.append(
                f"| {kind} | {r['clients']} | {r['per_second']} | {r['p50_ms']} | {r['p90_ms']} "
                f"| {r['p99_ms']} | {errors} | {front_cpu} / {shares} |"
            )
    out += [
        "",
        "## P3: concurrent awaited requests on one web process",
        "",
        "N connections each await `GET /api/tasks/<id>?wait=30` on one fresh web process. Once",
        "all are open, every result is stored and published as a worker does (SETEX + PUBLISH,",
        "pipelined); *drain* is the time from then to the last answer.",
        "",
        "![memory](benchmarks/waits-memory.png)",
        "",
        "| waits | answered | open s | drain s | RSS idle MB | RSS holding MB | peak MB | errors |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in p3:
        errors = {**r["errors"], **r["other_statuses"]} or "none"
        out.append(
            f"| {r['waits']:,} | {r['answered']:,} | {r['open_seconds']} | {r['drain_seconds']} "
            f"| {r['rss_before_mb']} | {r['rss_held_mb']} | {r['rss_peak_mb']} | {errors} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    draw(results, args.docs / "benchmarks")
    generated = page(results)
    notes = ROOT / "bench" / "findings.md"
    if notes.exists():
        generated += "\n" + notes.read_text()
    (args.docs / "benchmarks.md").write_text(generated)


if __name__ == "__main__":
    main()

"""Prometheus text exposition, small enough not to need prometheus_client."""

import bisect
import functools
import os
import resource
from collections import Counter
from collections.abc import Callable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Anything else a client sends becomes "other", so labels stay bounded.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.count = 0
        self.sum = 0.0


class Metrics:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._bounds = buckets
        self._requests: Counter[tuple[str, str, str]] = Counter()
        self._latency: dict[str, _Histogram] = {}
        self.waits_in_flight = 0
        self.submit_errors = 0
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def add_gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._gauges[name] = (help_text, read)

    def observe_request(
        self, handler: str, method: str, code: int, seconds: float
    ) -> None:
        method = method if method in _METHODS else "other"
        self._requests[(handler, method, str(code))] += 1
        hist = self._latency.get(handler)
        if hist is None:
            hist = self._latency[handler] = _Histogram(len(self._bounds))
        index = bisect.bisect_left(self._bounds, seconds)
        if index < len(self._bounds):
            hist.buckets[index] += 1
        hist.count += 1
        hist.sum += seconds

    def render(self) -> str:
        out: list[str] = []
        name = "stackdemo_http_requests_total"
        _header(out, name, "counter", "HTTP requests answered.")
        for (handler, method, code), value in sorted(self._requests.items()):
            labels = _labels(handler=handler, method=method, code=code)
            out.append(f"{name}{labels} {value}")

        name = "stackdemo_http_request_duration_seconds"
        _header(out, name, "histogram", "Time to answer HTTP requests.")
        for handler, hist in sorted(self._latency.items()):
            cumulative = 0
            for bound, count in zip(self._bounds, hist.buckets, strict=True):
                cumulative += count
                labels = _labels(handler=handler, le=_number(bound))
                out.append(f"{name}_bucket{labels} {cumulative}")
            labels = _labels(handler=handler, le="+Inf")
            out.append(f"{name}_bucket{labels} {hist.count}")
            labels = _labels(handler=handler)
            out.append(f"{name}_sum{labels} {_number(hist.sum)}")
            out.append(f"{name}_count{labels} {hist.count}")

        name = "stackdemo_result_waits_in_flight"
        _header(out, name, "gauge", "Requests now awaiting a task result.")
        out.append(f"{name} {self.waits_in_flight}")

        name = "stackdemo_task_submit_errors_total"
        _header(out, name, "counter", "Tasks that could not be sent to the broker.")
        out.append(f"{name} {self.submit_errors}")

        for name, (help_text, read) in sorted(self._gauges.items()):
            _header(out, name, "gauge", help_text)
            out.append(f"{name} {_number(read())}")
        return "\n".join(out) + "\n"


def render_gauge(name: str, help_text: str, value: float) -> str:
    out: list[str] = []
    _header(out, name, "gauge", help_text)
    out.append(f"{name} {_number(value)}")
    return "\n".join(out) + "\n"


def render_queue_depths(depths: Mapping[str, int]) -> str:
    """Messages waiting in each queue, all priority lists counted."""
    out: list[str] = []
    name = "stackdemo_queue_messages"
    _header(out, name, "gauge", "Messages waiting in a queue (every priority).")
    for queue, depth in sorted(depths.items()):
        out.append(f"{name}{_labels(queue=queue)} {depth}")
    return "\n".join(out) + "\n"


@functools.cache
def _boot_time() -> float:
    # Fixed until the next boot: read once, not at every scrape.
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def render_process() -> str:
    """prometheus_client's process_* metrics, read from /proc/self (Linux)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            # Fields after the command name, which may itself hold spaces.
            fields = stat.read().rsplit(")", 1)[1].split()
        open_fds = len(os.listdir("/proc/self/fd"))
        boot_time = _boot_time()
    except OSError:
        return ""
    ticks = os.sysconf("SC_CLK_TCK")
    page = resource.getpagesize()
    # man 5 proc: utime, stime (14, 15), starttime (22), vsize (23), rss (24).
    values = (
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time (s).",
            (int(fields[11]) + int(fields[12])) / ticks,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size.",
            int(fields[20]),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size.",
            int(fields[21]) * page,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time (Unix time).",
            boot_time + int(fields[19]) / ticks,
        ),
        ("process_open_fds", "gauge", "Open file descriptors.", open_fds),
        (
            "process_max_fds",
            "gauge",
            "Maximum open file descriptors.",
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        ),
    )
    out: list[str] = []
    for name, kind, help_text, value in values:
        _header(out, name, kind, help_text)
        out.append(f"{name} {_number(value)}")
    return "\n".join(out) + "\n"


def _header(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    inner = ",".join(f'{key}="{escape(value)}"' for key, value in labels.items())
    return "{" + inner + "}"


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)

"""Prometheus metrics: every metric Turnpike exposes is defined here (``turnpike_*``), low
enough that the gateway, billing, the limiter, Redis's health and the Celery app can all
import it (README, "Metrics").

Two ways to keep the values, chosen by prometheus-client from the environment when this
module is imported:

* ``PROMETHEUS_MULTIPROC_DIR`` set (production: several gateway processes and Celery workers
  per host): each process writes its values to its own memory-mapped files in that
  directory, and a scrape of any process's ``/metrics`` adds them all up. Gauges of
  processes that are gone are dropped (their files are removed at exit, and by any process
  that starts or scrapes and finds their process id dead); counters and histograms of
  processes that are gone stay in the sums, so totals never go backwards.
* unset: one in-memory registry per process (``/metrics`` shows that process alone).

The hot path never touches a metric object. A request's figures go to plain dicts in
memory (``tally.count`` / ``tally.observe``: a tuple key and an addition) and a timer on
the event loop writes them into the metrics every METRICS_FLUSH_SECONDS, one write per
label set, along with the per-process gauges read from their ``sampler`` (requests in
flight, open streams, rows waiting in memory). A scrape flushes its own process first.
Rare events (a credential cooled, Redis lost, a Celery task ended) write directly.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import logging
import os
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

# An empty PROMETHEUS_MULTIPROC_DIR would put the value files in the working directory.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR", None) == "":
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]

from prometheus_client import (  # noqa: E402
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

log = logging.getLogger(__name__)

MULTIPROC_DIR: str | None = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def drop_dead_gauges(path: str, also: int | None = None) -> int:
    """Remove the live-gauge files of processes that no longer run (one killed with
    SIGKILL never removed its own), and those of ``also`` (this process at start-up: a
    file left by an earlier process with the same id). Counter and histogram files are
    kept. Returns the files removed."""
    removed = 0
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_GAUGE_FILE.search(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == also or not _alive(pid):
            try:
                os.remove(name)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


if MULTIPROC_DIR:
    os.makedirs(MULTIPROC_DIR, exist_ok=True)
    drop_dead_gauges(MULTIPROC_DIR, also=os.getpid())  # before any value file is opened

disable_created_metrics()  # no *_created series: half the exposition, nothing Turnpike reads

# Metrics register here (single-process mode exposes it; multiprocess mode reads the files).
REGISTRY = CollectorRegistry(auto_describe=True)

# Seconds. Requests to LLMs run from milliseconds (a refusal) to many minutes (a long
# reasoning stream); Redis answers in well under a millisecond.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0)
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 1.0)
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
    return Counter(name, doc, list(labels), registry=REGISTRY)


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
    """A per-process value; with several processes, the sum over those alive."""
    return Gauge(name, doc, list(labels), registry=REGISTRY, multiprocess_mode="livesum")


class Timing:
    """A histogram and its bucket bounds, for ``tally.observe``."""

    __slots__ = ("metric", "bounds")

    def __init__(self, name: str, doc: str, labels: Iterable[str],
                 buckets: tuple[float, ...]) -> None:
        self.metric = Histogram(name, doc, list(labels), registry=REGISTRY, buckets=buckets)
        self.bounds = (*buckets, float("inf"))


# --- requests (the pipeline: gateway.metrics.observe) --------------------------------------

REQUEST_LABELS = ("endpoint", "model", "upstream", "status_class", "error_code", "stream")
TIMING_LABELS = ("endpoint", "model", "upstream", "stream")
REQUESTS = _counter("turnpike_requests_total", "Requests answered by the /v1 API.",
                    REQUEST_LABELS)
REQUEST_SECONDS = Timing("turnpike_request_duration_seconds",
                         "Time from a request's arrival to the end of its answer.",
                         TIMING_LABELS, REQUEST_BUCKETS)
FIRST_BYTE_SECONDS = Timing("turnpike_time_to_first_byte_seconds",
                            "Time from a request's arrival to the first byte of an answer "
                            "the upstream served.", TIMING_LABELS, REQUEST_BUCKETS)
TOKENS = _counter("turnpike_tokens_total",
                  "Tokens of served requests, by kind (input, cached, output, reasoning; "
                  "cached and reasoning are parts of input and output).",
                  ("model", "upstream", "kind"))
COST = _counter("turnpike_cost_total",
                "What requests were charged, in the billing currency (BILLING_CURRENCY).",
                ("model", "upstream"))
UPSTREAM_ATTEMPTS = _counter("turnpike_upstream_attempts_total",
                             "Upstream attempts, by how each ended.", ("upstream", "outcome"))
UPSTREAM_SECONDS = Timing("turnpike_upstream_attempt_duration_seconds",
                          "Time from sending an attempt to the upstream to its answer "
                          "starting (or failing).", ("upstream", "outcome"), REQUEST_BUCKETS)
FAILOVERS = _counter("turnpike_failovers_total",
                     "Attempts after which the request moved on to another route, by the "
                     "upstream it left.", ("upstream",))
LIMITER_REFUSALS = _counter("turnpike_limiter_refusals_total",
                            "Requests refused by the key policy's limits, by error code.",
                            ("code",))
LOCAL_ADMISSIONS = _counter("turnpike_limiter_local_admissions_total",
                            "Requests admitted by a process's own limiter while Redis was "
                            "unreachable (GATEWAY_REDIS_FAILURE=open).")
IN_FLIGHT = _gauge("turnpike_in_flight_requests", "Requests being answered now.")
OPEN_STREAMS = _gauge("turnpike_open_streams", "Streamed answers open now.")

# --- upstreams --------------------------------------------------------------------------

COOLDOWNS = _counter("turnpike_credential_cooldowns_total",
                     "Upstream credentials taken out of routing after a failure: cooled "
                     "(a 429 or 5xx) or disabled (refused by the upstream).",
                     ("upstream", "action"))
UPSTREAM_UP = "turnpike_upstream_up"  # read at scrape time (gateway.metrics)
UPSTREAM_PROBE_FAILURES = "turnpike_upstream_probe_failures"

# --- Redis ------------------------------------------------------------------------------

REDIS_SECONDS = Timing("turnpike_redis_roundtrip_seconds",
                       "Round trips of the limiter's calls to Redis (admit, settle).",
                       ("op",), REDIS_BUCKETS)
REDIS_OUTAGES = _counter("turnpike_redis_outages_total",
                         "Times a process found Redis unreachable after it had answered.")
REDIS_REDIRECTS = _counter("turnpike_redis_redirects_total",
                          "Redis Cluster replies the hot path's client followed: MOVED (a "
                          "slot's master changed), ASK (a key of a slot being moved is on "
                          "the importing master) and TRYAGAIN (a script's keys split "
                          "between the two: sent again after a pause).", ("kind",))
for _kind in ("moved", "ask", "tryagain"):  # every series shown from the start, at 0
    REDIS_REDIRECTS.labels(_kind)
REDIS_UNREACHABLE = _gauge("turnpike_redis_unreachable_processes",
                           "Processes that cannot reach Redis now.")
REDIS_UP = "turnpike_redis_up"  # scrape time
REDIS_FAILURE_MODE = "turnpike_redis_failure_mode"

# --- usage rows and stored responses waiting ---------------------------------------------

USAGE_PENDING = _gauge("turnpike_usage_rows_pending",
                       "Usage rows queued in gateway processes' memory, not yet written.")
STORE_PENDING = _gauge("turnpike_stored_responses_pending",
                       "Stored responses queued in gateway processes' memory.")
USAGE_SPOOLED = "turnpike_usage_rows_spooled"  # scrape time
STORE_SPOOLED = "turnpike_stored_responses_spooled"

# --- Celery -----------------------------------------------------------------------------

CELERY_TASKS = _counter("turnpike_celery_tasks_total",
                        "Celery tasks that ended, by task name and outcome.",
                        ("task", "outcome"))
CELERY_SECONDS = Histogram("turnpike_celery_task_duration_seconds",
                           "How long Celery tasks ran.", ["task"], registry=REGISTRY,
                           buckets=TASK_BUCKETS)
CELERY_QUEUE = "turnpike_celery_queue_length"  # scrape time


# --- the hot path's tally -----------------------------------------------------------------

Sampler = Callable[[], float]


class Tally:
    """What requests counted since the last flush, in plain dicts (single-threaded: the
    event loop's thread adds and flushes)."""

    def __init__(self) -> None:
        # None until configure() read GATEWAY_METRICS (the settings may not be ready when
        # this module is imported).
        self.enabled: bool | None = None
        self.counts: dict[tuple[Counter, tuple[str, ...]], float] = {}
        self.timings: dict[tuple[Timing, tuple[str, ...]], list[float]] = {}
        self.samplers: list[tuple[Gauge, Sampler]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.interval = 1.0

    def count(self, counter: Counter, labels: tuple[str, ...], amount: float = 1.0) -> None:
        key = (counter, labels)
        self.counts[key] = self.counts.get(key, 0.0) + amount

    def observe(self, timing: Timing, labels: tuple[str, ...], value: float) -> None:
        key = (timing, labels)
        entry = self.timings.get(key)
        if entry is None:
            entry = self.timings[key] = [0.0] * (len(timing.bounds) + 1)
        entry[0] += value
        entry[bisect_left(timing.bounds, value) + 1] += 1

    def sampler(self, gauge: Gauge, read: Sampler) -> None:
        """Set ``gauge`` to ``read()`` at every flush (a per-process value: requests in
        flight, rows in memory)."""
        self.samplers.append((gauge, read))

    def keep_flushing(self) -> None:
        """Make sure the running event loop flushes every ``interval`` seconds (once per
        loop; called by every request, so it costs a comparison)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            loop.call_later(self.interval, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:  # another loop took over (tests): this chain ends
            return
        try:
            self.flush()
        except Exception:
            log.exception("writing the metrics failed")
        loop.call_later(self.interval, self._tick, loop)

    def flush(self, samples: bool = True) -> None:
        counts, self.counts = self.counts, {}
        timings, self.timings = self.timings, {}
        for (counter, labels), amount in counts.items():
            (counter.labels(*labels) if labels else counter).inc(amount)
        for (timing, labels), entry in timings.items():
            _add_observations(timing.metric.labels(*labels), entry)
        if samples:
            for gauge, read in self.samplers:
                try:
                    gauge.set(read())
                except Exception:
                    log.exception("reading %s failed", gauge._name)


def _add_observations(child: Histogram, entry: list[float]) -> None:
    """Add many observations to one histogram child at once: the sum, then each bucket's
    count (prometheus-client keeps per-bucket counts, not cumulative ones, in ``_buckets``;
    Histogram.observe does the same one at a time)."""
    child._sum.inc(entry[0])
    buckets = child._buckets
    for i, n in enumerate(entry[1:]):
        if n:
            buckets[i].inc(n)


tally = Tally()


def configure() -> bool:
    """Read GATEWAY_METRICS and METRICS_FLUSH_SECONDS (once); True when metrics are on."""
    from django.conf import settings

    tally.interval = float(settings.METRICS_FLUSH_SECONDS)
    tally.enabled = bool(settings.GATEWAY_METRICS)
    return tally.enabled


def enabled() -> bool:
    on = tally.enabled
    return configure() if on is None else on


# --- rare events, written at once ---------------------------------------------------------

def credential_cooled(upstream: str, disabled: bool) -> None:
    COOLDOWNS.labels(upstream, "disabled" if disabled else "cooled").inc()


def redis_lost() -> None:
    REDIS_OUTAGES.inc()
    REDIS_UNREACHABLE.set(1)


def redis_back() -> None:
    REDIS_UNREACHABLE.set(0)


def redis_redirected(kind: str) -> None:
    """The cluster client followed a ``kind`` reply: "moved", "ask" or "tryagain"."""
    REDIS_REDIRECTS.labels(kind).inc()


def redis_roundtrip(op: str, started: float) -> None:
    """A limiter call to Redis that began at ``started`` (perf_counter) just answered."""
    if tally.enabled or (tally.enabled is None and configure()):
        tally.observe(REDIS_SECONDS, (op,), time.perf_counter() - started)


# --- Celery signals -----------------------------------------------------------------------

_task_started: dict[str, float] = {}


def _task_name(sender: Any) -> str:
    return str(getattr(sender, "name", None) or "unknown")


def connect_celery() -> None:
    """Count task outcomes and time tasks in whichever process runs them (workers are
    separate processes: with PROMETHEUS_MULTIPROC_DIR shared with the gateways on the host,
    a gateway's /metrics shows them)."""
    from celery import signals

    def success(sender: Any = None, **_: Any) -> None:
        if enabled():
            CELERY_TASKS.labels(_task_name(sender), "success").inc()

    def failure(sender: Any = None, **_: Any) -> None:
        if enabled():
            CELERY_TASKS.labels(_task_name(sender), "failure").inc()

    def retry(sender: Any = None, **_: Any) -> None:
        if enabled():
            CELERY_TASKS.labels(_task_name(sender), "retry").inc()

    def prerun(task_id: str = "", **_: Any) -> None:
        if enabled():
            _task_started[task_id] = time.perf_counter()

    def postrun(sender: Any = None, task_id: str = "", **_: Any) -> None:
        started = _task_started.pop(task_id, None)
        if started is not None:
            CELERY_SECONDS.labels(_task_name(sender)).observe(time.perf_counter() - started)

    def process_done(**_: Any) -> None:  # a prefork child exits without atexit
        at_exit()

    for signal, handler in ((signals.task_success, success), (signals.task_failure, failure),
                            (signals.task_retry, retry), (signals.task_prerun, prerun),
                            (signals.task_postrun, postrun),
                            (signals.worker_process_shutdown, process_done)):
        signal.connect(handler, weak=False)


# --- exposition ---------------------------------------------------------------------------

class _Joined:
    """Several collectors as one registry for the exposition encoders."""

    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> Iterable[Any]:
        for collector in self.collectors:
            yield from collector.collect()


def exposition(accept: str, extra: Collector | None = None) -> tuple[bytes, str]:
    """Every metric in the text format the scraper accepts (Prometheus's, or OpenMetrics),
    with ``extra`` (values read at scrape time). Sync: reads the value files."""
    from prometheus_client.exposition import choose_encoder

    if MULTIPROC_DIR:
        drop_dead_gauges(MULTIPROC_DIR)
        source: Any = MultiProcessCollector(None, MULTIPROC_DIR)
    else:
        source = REGISTRY
    encoder, content_type = choose_encoder(accept)
    joined = _Joined(source, *([extra] if extra is not None else []))
    return encoder(joined), content_type


def at_exit() -> None:
    """Write what this process still holds, then drop its live gauges (multiprocess)."""
    try:
        tally.flush(samples=False)
    except Exception:
        log.exception("writing the metrics at exit failed")
    if MULTIPROC_DIR:
        from prometheus_client.multiprocess import mark_process_dead

        pid = os.getpid()
        mark_process_dead(pid, MULTIPROC_DIR)
        drop_if_empty(MULTIPROC_DIR, pid)


def drop_if_empty(path: str, pid: int) -> None:
    """Remove ``pid``'s counter and histogram files if every value in them is zero: a
    process that counted nothing (a ``manage.py`` command, a worker that ran no task)
    leaves nothing behind for every scrape to read."""
    from prometheus_client.mmap_dict import MmapedDict

    for name in glob.glob(os.path.join(path, f"*_{pid}.db")):
        if os.path.basename(name).startswith("gauge_"):
            continue
        try:
            if all(value == 0 for _, value, _, _ in
                   MmapedDict.read_all_values_from_file(name)):
                os.remove(name)
        except OSError:
            pass


atexit.register(at_exit)

"""The metrics' pure parts, in process: how an upstream attempt's outcome is named, bounded
labels, the tally (batched observations land in the same buckets as one-by-one ones),
who may scrape (address allow-list, bearer token), the kill switch, the multiprocess
directory's housekeeping, Redis outage gauges, and the deploy/ dashboard and alert rules'
structure. Against processes: tests/gateway/test_metrics.py."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from gateway import metrics as gm
from gateway.pipeline import ENDPOINTS
from portal.infra import metrics as m

ROOT = Path(__file__).resolve().parent.parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "turnpike-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "turnpike-alerts.yml"
METRIC_NAME = re.compile(r"\bturnpike_[a-z0-9_]+\b")


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    exprs += [str(v.get("query", "")) for v in board.get("templating", {}).get("list", [])]
    return exprs


def rule_exprs() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def entry(status: int, error: str) -> dict[str, Any]:
    return {"upstream": "u", "status": status, "error": error, "ms": 5}


@pytest.mark.parametrize(("status", "error", "outcome"), [
    (200, "", "ok"),
    (0, "credential_rpm_full", "rpm_full"),
    (0, "upstream_timeout", "timeout"),
    (0, "upstream_unavailable", "unreachable"),
    (200, "upstream_bad_response", "bad_answer"),
    (302, "upstream_redirect", "redirect"),
    (429, "rate_limit_exceeded", "rate_limited"),
    (401, "invalid_api_key", "refused"),
    (403, "permission_error", "refused"),
    (400, "invalid_request_error", "client_error"),
    (503, "upstream_error", "server_error"),
])
def test_an_attempts_outcome_is_one_of_a_few_words(status: int, error: str,
                                                   outcome: str) -> None:
    assert gm.attempt_outcome(entry(status, error)) == outcome


def test_the_endpoint_label_knows_every_routed_endpoint() -> None:
    assert frozenset(ENDPOINTS) | {gm.BACKGROUND} == gm.ENDPOINTS


def test_a_bounded_label_keeps_the_first_values_and_calls_the_rest_other() -> None:
    label = gm.Bounded(3)
    assert [label(v) for v in ("a", "b", "a", "c", "d", "b", "e")] == [
        "a", "b", "a", "c", "other", "b", "other"]
    assert label("x" * 500) == "other"
    assert gm.Bounded(5)("y" * 500) == "y" * 100


def test_batched_observations_land_in_the_buckets_observe_would_use() -> None:
    values = [0.0, 0.005, 0.0051, 0.3, 1.0, 7.5, 599.0, 601.0, 10_000.0]
    reference = Histogram("reference_seconds", "x", buckets=m.REQUEST_BUCKETS,
                          registry=CollectorRegistry())
    for v in values:
        reference.observe(v)
        m.tally.observe(m.REQUEST_SECONDS, ("tally-test", "", "", "false"), v)
    m.tally.flush(samples=False)
    child = m.REQUEST_SECONDS.metric.labels("tally-test", "", "", "false")

    def samples(metric: Any) -> list[tuple[str, str, float]]:
        return [(s.name.rsplit("_", 1)[-1], s.labels.get("le", ""), s.value)
                for family in metric.collect() for s in family.samples
                if s.labels.get("endpoint", "tally-test") == "tally-test"]

    assert samples(child) == samples(reference)


def test_counts_are_summed_until_the_flush() -> None:
    labels = ("tally-test", "m", "u", "2xx", "", "false")
    before = m.REQUESTS.labels(*labels)._value.get()
    for _ in range(3):
        m.tally.count(m.REQUESTS, labels)
    assert m.REQUESTS.labels(*labels)._value.get() == before
    m.tally.flush(samples=False)
    assert m.REQUESTS.labels(*labels)._value.get() == before + 3


def scope(client: str | None, authorization: str | None = None) -> dict[str, Any]:
    headers = [(b"authorization", authorization.encode())] if authorization else []
    return {"type": "http", "method": "GET", "path": "/metrics", "headers": headers,
            "client": (client, 50000) if client else None}


@pytest.mark.parametrize(("client", "allowed"), [
    ("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True), ("10.1.2.3", False),
    ("127.0.0.2", False), ("fe80::1", False), (None, False), ("not-an-address", False),
])
def test_only_addresses_in_metrics_allow_may_scrape(settings: Any, client: str | None,
                                                    allowed: bool) -> None:
    settings.METRICS_ALLOW = ["127.0.0.1/32", "::1/128"]
    settings.METRICS_TOKEN = None
    refused = gm.refusal(scope(client))
    assert (refused is None) == allowed
    if not allowed:
        assert refused is not None and refused[0] == 403 and "METRICS_ALLOW" in refused[1]


def test_networks_in_metrics_allow_match_every_address_in_them(settings: Any) -> None:
    settings.METRICS_TOKEN = None
    settings.METRICS_ALLOW = ["10.0.0.0/8", "2001:db8::/32"]
    assert gm.refusal(scope("10.200.3.4")) is None
    assert gm.refusal(scope("2001:db8::7")) is None
    assert gm.refusal(scope("11.0.0.1")) is not None
    assert gm.refusal(scope("127.0.0.1")) is not None


@pytest.mark.parametrize(("header", "allowed"), [
    (None, False), ("Bearer wrong", False), ("Basic c2VjcmV0", False), ("secret-1", False),
    ("Bearer secret-1", True), ("bearer secret-1", True), ("Bearer  secret-1 ", True),
])
def test_with_metrics_token_a_scrape_must_bear_it(settings: Any, header: str | None,
                                                  allowed: bool) -> None:
    settings.METRICS_ALLOW = ["127.0.0.1/32"]
    settings.METRICS_TOKEN = "secret-1"
    refused = gm.refusal(scope("127.0.0.1", header))
    assert (refused is None) == allowed
    if not allowed:
        assert refused is not None and refused[0] == 401 and "METRICS_TOKEN" in refused[1]
    # The address is checked first: a token does not open the allow-list.
    assert gm.refusal(scope("10.0.0.1", "Bearer secret-1"))[0] == 403  # type: ignore[index]


def test_a_scrape_through_a_proxy_needs_the_token(settings: Any) -> None:
    """daphne --proxy-headers takes the address from X-Forwarded-For, which any client can
    send: without a token such a scrape is refused whatever address it claims."""
    settings.METRICS_ALLOW = ["127.0.0.1/32"]
    settings.METRICS_TOKEN = None
    for header in (b"x-forwarded-for", b"forwarded", b"x-real-ip"):
        proxied = {**scope("127.0.0.1"), "headers": [(header, b"127.0.0.1")]}
        refused = gm.refusal(proxied)
        assert refused is not None and refused[0] == 403 and "proxy" in refused[1]
    settings.METRICS_TOKEN = "secret-2"
    proxied = {**scope("127.0.0.1"), "headers": [(b"x-forwarded-for", b"127.0.0.1"),
                                                 (b"authorization", b"Bearer secret-2")]}
    assert gm.refusal(proxied) is None


def test_with_metrics_off_requests_count_nothing_and_metrics_answers_404() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    was = m.tally.enabled
    m.tally.enabled = False
    try:
        asyncio.run(gm.metrics_app(scope("127.0.0.1"), receive, send))
        m.redis_roundtrip("admit", 0.0)
        gm.observe(None)  # type: ignore[arg-type]  (returns before reading it)
    finally:
        m.tally.enabled = was
    assert sent[0]["status"] == 404
    assert b"GATEWAY_METRICS=false" in sent[1]["body"]
    assert not m.tally.timings.get((m.REDIS_SECONDS, ("admit",)))


def test_redis_outages_move_the_unreachable_gauge_and_count_once() -> None:
    from portal.infra.redishealth import RedisHealth

    health = RedisHealth()
    outages = m.REDIS_OUTAGES._value.get()
    health.failed(ConnectionError("down"))
    health.failed(ConnectionError("still down"))
    assert m.REDIS_UNREACHABLE._value.get() == 1
    assert m.REDIS_OUTAGES._value.get() == outages + 1

    async def recover() -> None:
        health.succeeded()

    asyncio.run(recover())
    assert m.REDIS_UNREACHABLE._value.get() == 0


def dead_pid() -> int:
    """A process id no process has now (from the top of the range, rarely used)."""
    top = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(top - 1, top - 1000, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("no free process id found")


def write_values(path: Path, values: dict[str, float]) -> None:
    mapped = MmapedDict(str(path))
    for name, value in values.items():
        mapped.write_value(mmap_key(name, name, [], [], "doc"), value, 0.0)
    mapped.close()


def test_the_multiprocess_directory_drops_dead_processes_gauges_but_keeps_their_counts(
        tmp_path: Path) -> None:
    dead, alive = dead_pid(), os.getppid()
    for name in (f"gauge_livesum_{dead}.db", f"gauge_livesum_{alive}.db",
                 f"counter_{dead}.db", f"histogram_{dead}.db"):
        write_values(tmp_path / name, {"x": 1.0})
    assert m.drop_dead_gauges(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        f"gauge_livesum_{alive}.db", f"counter_{dead}.db", f"histogram_{dead}.db"])
    # At start-up a process also drops live gauges a former process with its id left.
    assert m.drop_dead_gauges(str(tmp_path), also=alive) == 1


def test_a_process_that_counted_nothing_leaves_no_files(tmp_path: Path) -> None:
    pid = dead_pid()
    write_values(tmp_path / f"counter_{pid}.db", {"a": 0.0, "b": 0.0})
    write_values(tmp_path / f"histogram_{pid}.db", {"a": 0.0, "b": 2.0})
    write_values(tmp_path / f"counter_{pid}1.db", {"a": 0.0})  # another process's id
    m.drop_if_empty(str(tmp_path), pid)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"counter_{pid}1.db",
                                                          f"histogram_{pid}.db"]


def test_the_dashboard_and_the_alert_rules_are_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] and board["uid"] and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["type"] in ("row", "timeseries", "stat")
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["refId"] and METRIC_NAME.search(target["expr"]), panel["title"]
                assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    alerts = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert METRIC_NAME.search(rule["expr"]), rule["alert"]
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
            alerts[rule["alert"]] = rule
    # The five the issue asks for: error rate, upstream down, Redis failure, usage spool
    # growing, p99 latency.
    assert {"TurnpikeHighErrorRate", "TurnpikeUpstreamDown", "TurnpikeRedisUnreachable",
            "TurnpikeUsageSpoolGrowing", "TurnpikeHighLatencyP99"} <= set(alerts)


def test_every_name_the_dashboard_and_the_rules_use_is_defined() -> None:
    """The names Turnpike defines, with the suffixes a scrape gives them (the end-to-end
    test checks them against a real scrape)."""
    defined = set()
    for family in m.REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(
            family.type, [""])
        defined |= {family.name + s for s in suffixes}
    defined |= {m.UPSTREAM_UP, m.UPSTREAM_PROBE_FAILURES, m.REDIS_UP, m.REDIS_FAILURE_MODE,
                m.USAGE_SPOOLED, m.STORE_SPOOLED, m.CELERY_QUEUE}
    used = {n for expr in dashboard_exprs() + rule_exprs() for n in METRIC_NAME.findall(expr)}
    assert used - defined == set()


@pytest.mark.e2e  # runs a program: not in the fast tier
@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool (Debian's prometheus package) is not installed")
def test_promtool_parses_the_rules_and_every_dashboard_query(tmp_path: Path) -> None:
    """The rules as Prometheus loads them, and each dashboard query (Grafana's variables
    given values) as the expression of a recording rule, so PromQL's own parser checks it."""
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    queries = [expr.replace("$__rate_interval", "5m").replace("$model", ".*")
               for expr in dashboard_exprs() if METRIC_NAME.search(expr)
               and not expr.startswith("label_values(")]
    recorded = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"turnpike:dashboard_query_{i}", "expr": q} for i, q in enumerate(queries)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(recorded))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(queries)} rules found" in check.stdout

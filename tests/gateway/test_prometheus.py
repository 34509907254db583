"""The alert rules and a real Prometheus.

- ``promtool test rules``: each rule in deploy/prometheus/turnpike-alerts.yml fires on the
  series it is meant for, after its ``for:``, and stays quiet on the cases next to it
  (tests/gateway/prometheus/rules_test.yml). The rules are loaded without their
  annotations, which the cases would otherwise have to repeat word for word; promtool's
  ``check rules`` (tests/fast/test_metrics.py) checks the annotations' templates.
- Debian's Prometheus scrapes a real gateway with the shipped rules loaded, as an operator
  would: the target is up, a request served shows in a query, every rule evaluates without
  error, and an upstream failing its health probe makes TurnpikeUpstreamDown pending.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.models import Upstream
from gateway.services import upstream_create
from tests.conftest import gateway_env
from tests.servers import ROOT, FakeUpstream, free_port, start_fake_upstream, start_gateway, stop

RULES = ROOT / "deploy" / "prometheus" / "turnpike-alerts.yml"
CASES = Path(__file__).parent / "prometheus" / "rules_test.yml"

need_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                   reason="promtool (Debian's prometheus package) is missing")
need_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None,
                                     reason="prometheus (Debian's package) is missing")


@need_promtool
def test_each_alert_rule_fires_on_its_case_and_only_there(tmp_path: Path) -> None:
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules))
    shutil.copy(CASES, tmp_path / CASES.name)
    run = subprocess.run(["promtool", "test", "rules", CASES.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_every_alert_rule_has_a_case() -> None:
    names = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
             for rule in group["rules"]}
    cases = yaml.safe_load(CASES.read_text())["tests"]
    tested = {t["alertname"] for case in cases for t in case["alert_rule_test"]}
    assert names == tested
    firing = {t["alertname"] for case in cases for t in case["alert_rule_test"]
              if t["exp_alerts"]}
    assert firing == names  # each one is also seen firing, not only staying quiet


# --- a real Prometheus ------------------------------------------------------------------

@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    server = start_fake_upstream()
    yield server
    stop(server.proc)


def poll(read: Callable[[], Any], timeout: float = 60.0) -> Any:
    """``read()``'s first truthy value, polled until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


@need_prometheus
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_prometheus_scrapes_a_gateway_and_evaluates_the_shipped_rules(
        tmp_path: Path, fake: FakeUpstream, make_key: Callable[..., Any],
        django_db_blocker: Any) -> None:
    upstream_create(name="prom-live", kind="openai", base_url=fake.openai_url,
                    models=["gpt-4o-mini"], api_keys=["sk-fake"])
    upstream_create(name="prom-dead", kind="openai", base_url=fake.openai_url,
                    models=["other-model"], api_keys=["sk-fake"])
    Upstream.objects.filter(name="prom-dead").update(health="unhealthy",
                                                     health_error="HTTP 502")
    key = make_key()
    gateway = start_gateway(gateway_env(GATEWAY_SNAPSHOT_TTL="0", METRICS_FLUSH_SECONDS="0.1"))
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "turnpike", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [gateway.url.split("//")[1]]}]}],
    }))
    log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        answer = httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                            headers={"Authorization": f"Bearer {key.secret}"},
                            json={"model": "gpt-4o-mini",
                                  "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text

        def ready() -> bool:
            try:
                return api.get("/-/ready").status_code == 200
            except httpx.HTTPError:
                return False

        assert poll(ready), (tmp_path / "prometheus.log").read_text()[-2000:]

        def target_health() -> str | None:
            targets = api.get("/api/v1/targets").json()["data"]["activeTargets"]
            return targets[0]["health"] if targets and targets[0]["health"] != "unknown" else None

        assert poll(target_health) == "up"

        def served() -> float:
            query = ('sum(turnpike_requests_total{endpoint="chat/completions",'
                     'model="gpt-4o-mini",upstream="prom-live",status_class="2xx"})')
            result = api.get("/api/v1/query", params={"query": query}).json()["data"]["result"]
            return float(result[0]["value"][1]) if result else 0.0

        assert poll(served) == 1.0

        def pending() -> list[dict[str, Any]]:
            alerts = api.get("/api/v1/alerts").json()["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "TurnpikeUpstreamDown"]

        down = poll(pending)
        assert [(a["labels"]["upstream"], a["state"]) for a in down] == [("prom-dead", "pending")]

        def evaluated() -> list[dict[str, Any]] | None:
            groups = api.get("/api/v1/rules").json()["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if rules and all(r.get("lastEvaluation", "").startswith("20")
                                          and r["health"] != "unknown" for r in rules) else None

        rules = poll(evaluated)
        assert rules, "the rules were never evaluated"
        assert {r["name"] for r in rules} == {
            rule["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
            for rule in g["rules"]}
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    finally:
        api.close()
        stop(prometheus)
        log.close()
        stop(gateway.proc)

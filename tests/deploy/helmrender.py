"""Render the Helm chart with the real Helm (v4, the Go library inside the helm-sdkpy wheel),
without a cluster.

helm-sdkpy exposes Helm's install, upgrade and lint but not `helm template`. Its install
renders the chart exactly as `helm install` does and, before it creates any resource, stores
the release (the rendered manifest and hooks) as a Secret through the Kubernetes API. So the
chart is installed against a small loopback stand-in for the API server that answers
discovery, says every resource is absent, keeps the release Secret Helm creates and refuses
everything else: the install then stops at its first hook, and the manifests Helm rendered
are read back from the release it stored. Nothing here renders a template but Helm.

Helm's Go runtime is loaded in a child process (`python -m tests.deploy.helmrender`), never in
the test run's own: `render` and `lint` start one per call.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

KUBE_VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}

# The API groups and kinds the chart may use: (group/version, resource, kind, namespaced).
RESOURCES = [
    ("v1", "configmaps", "ConfigMap", True),
    ("v1", "secrets", "Secret", True),
    ("v1", "services", "Service", True),
    ("v1", "serviceaccounts", "ServiceAccount", True),
    ("v1", "namespaces", "Namespace", False),
    ("apps/v1", "deployments", "Deployment", True),
    ("batch/v1", "jobs", "Job", True),
    ("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", True),
    ("autoscaling/v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True),
    ("networking.k8s.io/v1", "ingresses", "Ingress", True),
]


def _resource_list(group_version: str) -> dict[str, Any]:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": [{"name": r, "singularName": "", "namespaced": ns, "kind": k,
                           "verbs": ["create", "delete", "get", "list", "patch", "update",
                                     "watch"]}
                          for gv, r, k, ns in RESOURCES if gv == group_version]}


def _group_list() -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for gv, *_ in RESOURCES:
        if "/" in gv:
            group, version = gv.split("/")
            groups.setdefault(group, []).append(version)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
         "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
        for g, vs in groups.items()]}


def _status(code: int, reason: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
            "code": code, "message": f"{reason} (stand-in API server)"}


class _StandIn(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/version":
            return self._send(200, KUBE_VERSION)
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            return self._send(200, _group_list())
        if path == "/api/v1":
            return self._send(200, _resource_list("v1"))
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "apis":
            return self._send(200, _resource_list(f"{parts[2]}/{parts[3]}"))
        if path.endswith("/secrets"):  # Helm's release history: none yet
            return self._send(200, {"kind": "SecretList", "apiVersion": "v1", "items": []})
        return self._send(404, _status(404, "NotFound"))

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        release = None
        if self.path.split("?", 1)[0].endswith("/secrets"):
            release = _release_field(body, self.headers.get("Content-Type", ""))
        if release is None:
            return self._send(403, _status(403, "Forbidden"))
        self.server.releases.append(release)
        return self._send(201, {"kind": "Secret", "apiVersion": "v1",
                                "metadata": {"name": "release", "namespace": "default"}})

    do_PUT = do_PATCH = do_DELETE = lambda self: self._send(403, _status(403, "Forbidden"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    releases: list[bytes]


@contextmanager
def _stand_in_api() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _StandIn)
    server.releases = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _kubeconfig(port: int) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "standin", "user": {}}],
        "contexts": [{"name": "standin",
                      "context": {"cluster": "standin", "user": "standin"}}]})


def _fields(buf: bytes) -> Iterator[tuple[int, bytes | int]]:
    """A protobuf message's fields (number, value): varints as ints, the rest as bytes."""
    i = 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            byte = buf[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, varint()
        elif wire == 2:
            size = varint()
            yield number, buf[i:i + size]
            i += size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            yield number, buf[i:i + size]
            i += size
        else:
            raise ValueError(f"protobuf wire type {wire}")


def _release_field(body: bytes, content_type: str) -> bytes | None:
    """The `release` entry of a Secret's data, from the JSON or the protobuf client-go sends
    (protobuf: the "k8s\\0" magic, then runtime.Unknown whose field 2 is the Secret, whose
    field 2 holds the data map's entries)."""
    if "json" in content_type:
        data = json.loads(body).get("data", {})
        return base64.b64decode(data["release"]) if "release" in data else None
    assert body[:4] == b"k8s\0", body[:16]
    raw = next(v for n, v in _fields(body[4:]) if n == 2)
    assert isinstance(raw, bytes)
    for number, entry in _fields(raw):
        if number == 2 and isinstance(entry, bytes):
            item = dict(_fields(entry))
            if item.get(1) == b"release":
                value = item[2]
                assert isinstance(value, bytes)
                return value
    return None


def _decode_release(stored: bytes) -> dict[str, Any]:
    """Helm's storage form: the release's JSON, gzipped, then base64."""
    return json.loads(gzip.decompress(base64.b64decode(stored)))


REPO = Path(__file__).resolve().parents[2]


def _child(*args: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "tests.deploy.helmrender", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"helm {args[0]} failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout)


def render(chart: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart's manifests, hooks included, as Helm renders them for an install (with the
    chart's values.yaml overridden by `values`)."""
    return _child("render", str(chart), json.dumps(values or {}))


def lint(chart: Path) -> dict[str, Any]:
    """`helm lint` of the chart: {"Messages": [{"Severity", "Path", ...}], "Errors": ...}."""
    return _child("lint", str(chart))


def _lint_here(chart: str) -> dict[str, Any]:
    import helm_sdkpy

    config = helm_sdkpy.Configuration(namespace="turnpike")
    return asyncio.run(helm_sdkpy.Lint(config).run(chart))


def _render_here(chart: str, values: dict[str, Any], release: str = "turnpike",
                 namespace: str = "turnpike") -> list[dict[str, Any]]:
    import helm_sdkpy

    with _stand_in_api() as server:
        config = helm_sdkpy.Configuration(namespace=namespace,
                                          kubeconfig=_kubeconfig(server.server_address[1]))
        try:
            asyncio.run(helm_sdkpy.Install(config).run(
                release, chart, values=values or None, wait=False, timeout=30))
        except helm_sdkpy.HelmError as exc:
            error: Exception | None = exc
        else:
            error = None
        if not server.releases:
            raise AssertionError(f"Helm stored no release (it stopped with: {error})")
        rel = _decode_release(server.releases[0])
    texts = [rel.get("manifest", "")] + [hook["manifest"] for hook in rel.get("hooks") or []]
    return [doc for text in texts for doc in yaml.safe_load_all(text) if doc]


if __name__ == "__main__":
    if sys.argv[1] == "render":
        print(json.dumps(_render_here(sys.argv[2], json.loads(sys.argv[3]))))
    elif sys.argv[1] == "lint":
        print(json.dumps(_lint_here(sys.argv[2])))
    else:
        raise SystemExit("usage: python -m tests.deploy.helmrender render|lint CHART [VALUES]")

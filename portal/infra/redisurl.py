"""REDIS_URL, read one way by everything that connects to Redis: the hot path's client
(portal.infra.fastredis), the settings (a URL nobody can honour stops the process at start-up) and
the Celery broker URL derived from it.

The forms are redis-py's (``redis.Redis.from_url``), so the sync client and the Django cache,
which hand the URL to redis-py, connect where the hot path does:

* ``redis://[[user]:password@]host[:port][/db]``
* ``rediss://...``: the same over TLS. ``ssl_cert_reqs`` (``none``, ``optional``,
  ``required``; default ``required``), ``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_certfile``,
  ``ssl_keyfile`` and ``ssl_check_hostname`` (default true) as query parameters.
* ``unix://[[user]:password@]/path/to/socket[?db=N]``

``?db=N`` overrides the path's database, as in redis-py. Any other scheme, an ``ssl_*``
parameter this client does not implement, or one on a URL without TLS is refused: a setting
that would be silently dropped (plain TCP for ``rediss://``, no verification) must stop the
gateway instead. Other query parameters (``socket_timeout``...) only tune redis-py's clients.
Error messages name the scheme or parameter, never the URL (it may hold a password).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlencode, urlparse

SCHEMES = ("redis", "rediss", "unix")
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
# The ssl_* query parameters both this client and redis-py honour; redis-py has more
# (ssl_password, ssl_min_version, OCSP...): refused rather than ignored by the hot path.
SSL_PARAMS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile",
              "ssl_check_hostname")
_FALSE = ("0", "F", "FALSE", "N", "NO")  # redis-py's to_bool


@dataclass(frozen=True)
class RedisTarget:
    """Where and how to connect; ``tls`` holds the ``ssl_*`` parameters (None: no TLS)."""

    scheme: str
    host: str
    port: int
    path: str | None  # the socket's path for unix://
    db: int
    username: str | None
    password: str | None
    tls: dict[str, str] | None

    @property
    def where(self) -> str:
        return f"unix socket {self.path}" if self.path else f"{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context redis-py's SSLConnection would build from the same parameters."""
        if self.tls is None:
            return None
        cert_reqs = CERT_REQS[self.tls.get("ssl_cert_reqs", "required")]
        check = self.tls.get("ssl_check_hostname", "true").upper() not in _FALSE
        context = ssl.create_default_context()
        context.check_hostname = check and cert_reqs != ssl.CERT_NONE
        context.verify_mode = cert_reqs
        try:
            if "ssl_certfile" in self.tls or "ssl_keyfile" in self.tls:
                context.load_cert_chain(self.tls.get("ssl_certfile", ""),
                                        self.tls.get("ssl_keyfile"))
            if "ssl_ca_certs" in self.tls or "ssl_ca_path" in self.tls:
                context.load_verify_locations(cafile=self.tls.get("ssl_ca_certs"),
                                              capath=self.tls.get("ssl_ca_path"))
        except OSError as exc:
            raise ValueError(f"Redis URL TLS files cannot be loaded: {exc}") from exc
        return context


def parse_redis_url(url: str) -> RedisTarget:
    """Parse and check a Redis URL; ValueError names what cannot be honoured."""
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"Redis URL scheme {parsed.scheme + '://' if parsed.scheme else '(none)'}"
                         " is not supported: use redis://, rediss:// or unix://")
    query = {name: values[-1] for name, values in parse_qs(parsed.query).items()}
    tls = {name: value for name, value in query.items() if name.startswith("ssl_")}
    unknown = sorted(set(tls) - set(SSL_PARAMS))
    if unknown:
        raise ValueError(f"Redis URL parameter {unknown[0]} is not supported by the gateway's "
                         f"Redis client (supported: {', '.join(SSL_PARAMS)})")
    if tls and scheme != "rediss":
        raise ValueError(f"Redis URL parameter {sorted(tls)[0]} needs a rediss:// URL "
                         f"(this one is {scheme}://)")
    if tls.get("ssl_cert_reqs", "required") not in CERT_REQS:
        raise ValueError("Redis URL parameter ssl_cert_reqs must be none, optional or required")
    if scheme == "unix":
        path = unquote(parsed.path)
        if not path:
            raise ValueError("Redis URL unix:// needs the socket's path: unix:///path/to/sock")
        db_text = query.get("db", "0")
    else:
        path = None
        db_text = query.get("db", unquote(parsed.path).strip("/") or "0")
    try:
        db = int(db_text)
        port = parsed.port or 6379
    except ValueError as exc:
        raise ValueError(f"Redis URL has an invalid database or port: {exc}") from exc
    if db < 0:
        raise ValueError("Redis URL database must be 0 or more")
    return RedisTarget(
        scheme=scheme, host=unquote(parsed.hostname or "") or "127.0.0.1", port=port,
        path=path, db=db,
        username=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        tls=tls if scheme == "rediss" else None)


def celery_broker_url(url: str) -> str:
    """REDIS_URL as kombu's Redis transport reads the same target.

    kombu differs from redis-py in three ways that would otherwise break or weaken the
    broker: it calls a unix socket ``redis+socket://`` (``unix://`` is no kombu transport),
    it takes the database as the virtual host, and it treats any other query parameter as
    a Connection argument; and for ``rediss://`` without ``ssl_cert_reqs`` it falls back to
    *no* certificate verification. So the URL is rebuilt with only what kombu understands,
    and ``ssl_cert_reqs=required`` (redis-py's default) unless the URL says otherwise.
    """
    target = parse_redis_url(url)
    if target.scheme == "redis" and not urlparse(url).query:
        return url
    auth = ""
    if target.username or target.password:
        auth = quote(target.username or "", safe="")
        if target.password:
            auth += ":" + quote(target.password, safe="")
        auth += "@"
    if target.path is not None:
        return f"redis+socket://{auth}{quote(target.path)}?virtual_host={target.db}"
    host = f"[{target.host}]" if ":" in target.host else target.host
    base = f"{target.scheme}://{auth}{host}:{target.port}/{target.db}"
    if target.tls is None:
        return base
    return base + "?" + urlencode({"ssl_cert_reqs": "required", **target.tls})

"""Turnpike settings. Everything comes from the environment; see README "Configuration".

With no environment at all this is the embedded default: a SQLite file next to manage.py,
in-process cache/limits/channel layer, and Celery tasks run eagerly in-process.
"""

from __future__ import annotations

import hashlib
import ipaddress
import warnings
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from portal.infra.logconfig import logging_config
from portal.infra.rediskeys import cache_prefix, channel_prefix
from portal.infra.redisurl import celery_broker_url, parse_redis_url
from portal.settings.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent.parent

DEBUG = env_bool("DEBUG", False)

# A missing SECRET_KEY is only tolerated for the embedded default (no DATABASE_URL): a
# per-checkout key is derived from the path so sessions survive restarts on one machine.
# Production (DATABASE_URL set) must provide one.
_secret = env_str("SECRET_KEY")
if _secret is None:
    if env_str("DATABASE_URL"):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("SECRET_KEY must be set when DATABASE_URL is set")
    _secret = "insecure-dev-" + hashlib.sha256(str(BASE_DIR).encode()).hexdigest()
SECRET_KEY: str = _secret

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "ninja",
    "django_htmx",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.github",
    "allauth.socialaccount.providers.openid_connect",
    "keys",
    "gateway",
    "billing",
    "portal",
    "auditlog",
    "portal.audit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "portal.audit.middleware.AuditMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "csp.middleware.CSPMiddleware",
    "portal.tenancy.TenantMiddleware",
]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
                "portal.tenancy.portal_context",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'turnpike.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A process cut off from PostgreSQL in the middle of a transaction (a network partition,
    # a killed host) must not hold its locks until TCP notices, two hours by default: the
    # server ends a session idle inside a transaction after this long, and keepalives find a
    # vanished peer in about a minute on both ends.
    _pg_options = DATABASES["default"].setdefault("OPTIONS", {})
    _idle_ms = env_int("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", 300) * 1000
    if _idle_ms > 0:
        _pg_options["options"] = " ".join(filter(None, [
            _pg_options.get("options"), f"-c idle_in_transaction_session_timeout={_idle_ms}"]))
    for _name, _value in (("keepalives", 1), ("keepalives_idle", 30),
                          ("keepalives_interval", 10), ("keepalives_count", 3)):
        _pg_options.setdefault(_name, _value)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the usage writer and the admin work at the same time on the embedded default.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0

# An optional streaming replica of the primary for analytic reads (README, "Read replica"):
# only code inside portal.infra.dbrouter.analytics() reads from it.
_replica_url = env_str("DATABASE_REPLICA_URL")
if _replica_url:
    _replica = dj_database_url.parse(
        _replica_url, conn_max_age=DATABASES["default"]["CONN_MAX_AGE"], conn_health_checks=True)
    if _replica["ENGINE"] != "django.db.backends.postgresql" or \
            DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured(
            "DATABASE_REPLICA_URL must be a postgres:// URL, with DATABASE_URL a PostgreSQL "
            f"primary too (got {_replica['ENGINE'] or 'an unknown engine'})")
    _replica["OPTIONS"] = {**DATABASES["default"].get("OPTIONS", {}),  # timeouts, keepalives
                           **_replica.get("OPTIONS", {})}
    _replica["TEST"] = {"MIRROR": "default"}
    DATABASES["replica"] = _replica
    DATABASE_ROUTERS = ["portal.infra.dbrouter.ReplicaRouter"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en"
# The portal's languages, chosen from the browser (Accept-Language), switchable, remembered
# in a cookie; catalogues in locale/ (compiled .mo files are committed).
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
# Number formats the portal overrides per language (portal/formats/zh_Hans: 1,234,567.50).
FORMAT_MODULE_PATH = ["portal.formats"]
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# WhiteNoise serves the admin's and portal's static files from daphne itself; with no
# collectstatic run (the embedded default) it finds them in the apps directly.
WHITENOISE_USE_FINDERS = True
warnings.filterwarnings("ignore", message="No directory at: ")

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/portal/"
# No django.contrib.sites: allauth then names the site after the host a request came to
# (and PORTAL_NAME in emails), with no database row to keep (a row a test flush or a fresh
# database would lack).
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]

# --- Portal accounts (django-allauth) -------------------------------------------------------
# Sign-up: "open" (anyone), "invite" (only through a tenant's invitation link), "closed".
PORTAL_SIGNUP = env_str("PORTAL_SIGNUP", "invite") or "invite"
if PORTAL_SIGNUP not in ("open", "invite", "closed"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("PORTAL_SIGNUP must be 'open', 'invite' or 'closed'")
# Email verification: "none", "optional" (a reminder) or "mandatory" (no login before it).
ACCOUNT_EMAIL_VERIFICATION = env_str("PORTAL_EMAIL_VERIFICATION", "optional") or "optional"
if ACCOUNT_EMAIL_VERIFICATION not in ("none", "optional", "mandatory"):
    raise ImproperlyConfigured(
        "PORTAL_EMAIL_VERIFICATION must be 'none', 'optional' or 'mandatory'")
# Days an invitation link stays valid.
PORTAL_INVITATION_DAYS = env_int("PORTAL_INVITATION_DAYS", 7)
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = "username"
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_ADAPTER = "portal.accounts.AccountAdapter"
ACCOUNT_LOGOUT_REDIRECT_URL = "/accounts/login/"
ACCOUNT_EMAIL_SUBJECT_PREFIX = f"[{env_str('PORTAL_NAME', 'Turnpike') or 'Turnpike'}] "
# Failed logins are throttled per IP and per account (allauth's rate limits).
# Behind a reverse proxy, ALLAUTH_TRUSTED_PROXY_COUNT=1 makes the limits count the client's
# address from X-Forwarded-For (by default the socket's address: the header is not trusted).
ACCOUNT_RATE_LIMITS = {"login_failed": "10/m/ip,5/5m/key"}
ALLAUTH_TRUSTED_PROXY_COUNT = env_int("ALLAUTH_TRUSTED_PROXY_COUNT", 0)
# Confirmation links log the user in when opened in the browser that signed up.
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes", "webauthn"]
MFA_PASSKEY_LOGIN_ENABLED = True
# Passkeys need a secure context: https, or http://localhost (browsers refuse an IP address
# such as 127.0.0.1 as a passkey's relying party).
MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = DEBUG
MFA_TOTP_ISSUER = env_str("PORTAL_NAME", "Turnpike") or "Turnpike"
MFA_ADAPTER = "portal.accounts.MFAAdapter"
# Optional single sign-on, configured from the environment (no database rows needed).
SOCIALACCOUNT_PROVIDERS: dict[str, dict[str, object]] = {}
if env_str("GITHUB_CLIENT_ID"):
    SOCIALACCOUNT_PROVIDERS["github"] = {"APPS": [{
        "client_id": env_str("GITHUB_CLIENT_ID"), "secret": env_str("GITHUB_CLIENT_SECRET", ""),
    }], "SCOPE": ["user:email"]}
if env_str("OIDC_SERVER_URL"):
    SOCIALACCOUNT_PROVIDERS["openid_connect"] = {"APPS": [{
        "provider_id": env_str("OIDC_PROVIDER_ID", "oidc"),
        "name": env_str("OIDC_NAME", "Single sign-on"),
        "client_id": env_str("OIDC_CLIENT_ID"), "secret": env_str("OIDC_CLIENT_SECRET", ""),
        "settings": {"server_url": env_str("OIDC_SERVER_URL")},
    }]}
SOCIALACCOUNT_ADAPTER = "portal.accounts.SocialAccountAdapter"
# An SSO login whose provider vouches for (verifies) the email of an existing account logs in
# to that account (and connects it), so SSO works for operator-made users with sign-up closed.
SOCIALACCOUNT_EMAIL_AUTHENTICATION = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = True

# Email: the console by default; SMTP when EMAIL_HOST is set.
EMAIL_HOST = env_str("EMAIL_HOST")
EMAIL_BACKEND = env_str("EMAIL_BACKEND") or (
    "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend")
# EMAIL_BACKEND=django.core.mail.backends.filebased.EmailBackend writes each email to a file
# in this folder (the browser tests read their verification links there).
EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "") or ""
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "") or ""
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)  # implicit TLS (port 465)
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", not EMAIL_USE_SSL)  # STARTTLS (port 587)
if EMAIL_USE_SSL and EMAIL_USE_TLS:
    raise ImproperlyConfigured("EMAIL_USE_SSL and EMAIL_USE_TLS cannot both be true")
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Turnpike <turnpike@localhost>")
# The portal's address in emails sent by workers (alerts), e.g. https://turnpike.example.
PORTAL_BASE_URL = env_str("PORTAL_BASE_URL", "") or ""

# Content-Security-Policy on every page (django-csp): the portal's scripts and styles are
# vendored files under static/, never inline, never from a CDN.
CONTENT_SECURITY_POLICY = {
    "EXCLUDE_URL_PREFIXES": ["/api/docs", "/api/v1/docs", "/api/ops/redoc"],
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
        "base-uri": ["'self'"],
    },
}

# --- Operations API (Django REST framework at /api/ops/, portal/ops/) --------------------
# Staff only: a staff-scoped personal access token (Bearer tp_pat_…), a DRF token
# (Token …, or Bearer …) or a staff user's session (the browsable API). The same classes are
# the defaults of any DRF view, so nothing under DRF is ever open by accident.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.ops.auth.AccessTokenAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "portal.ops.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["portal.ops.auth.IsOpsStaff"],
    "DEFAULT_FILTER_BACKENDS": [
        "portal.ops.filters.OpsFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "portal.ops.pagination.PagePagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "portal.ops.schema.OpsAutoSchema",
    "EXCEPTION_HANDLER": "portal.ops.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
# The OpenAPI document (drf-spectacular) and its docs pages, served with assets vendored by
# drf-spectacular-sidecar (no CDN).
SPECTACULAR_SETTINGS = {
    "TITLE": "Turnpike operations API",
    "DESCRIPTION": "Staff-only automation of everything the admin does: tenants, members, "
                   "groups, keys, upstreams, credentials, prices, model rules, redemption "
                   "codes, usage, the ledger and upstream health.",
    "VERSION": "1.0.0",
    "SCHEMA_PATH_PREFIX": "/api/ops",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["portal.ops.auth.IsOpsStaff"],
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "StatusEnum": "keys.models.Status",
        "RoleEnum": "keys.models.Membership.Role",
        "UpstreamKindEnum": "gateway.models.UpstreamKind",
        "LedgerKindEnum": "billing.models.LedgerEntry.Kind",
    },
}
# --- Audit log (django-auditlog; see README "Audit log") ---------------------------------------
# Entries are Turnpike's own model (surface, actor kind and label, tenant id), changes are
# stored as JSON ({field: [before, after]}), foreign keys by their name rather than their id.
AUDITLOG_LOGENTRY_MODEL = "audit.AuditEntry"
AUDITLOG_STORE_JSON_CHANGES = True
AUDITLOG_USE_FK_STRING_REPRESENTATION = True
AUDITLOG_DISABLE_REMOTE_ADDR = False
# auditlog's own migrations would create its (swapped out, never used) LogEntry table, whose
# foreign key to users then blocks TRUNCATE (test flushes); without them nothing is created.
MIGRATION_MODULES = {"auditlog": None}

# Live portal updates: channels' Redis layer with Redis, in-memory on the embedded default.
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# Session storage, not the default cookie: the admin shows a new key's secret once in a
# message, and a cookie would carry it (signed, not encrypted) through the browser.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

# --- Redis and shared state -------------------------------------------------------------
# REDIS_URL unset: every shared-state backend is in-process (fine for one process).
# redis://, rediss:// (TLS) or unix:// (portal.infra.redisurl); any other form stops start-up here
# rather than being read as plain TCP by one client and differently by another.
REDIS_URL = env_str("REDIS_URL")
# REDIS_URL names one node of a Redis Cluster (the others are discovered): every client
# routes by hash slot (Turnpike's keys carry hash tags: portal.infra.rediskeys). Celery's
# broker cannot be a cluster: CELERY_BROKER_URL must then name a plain Redis.
REDIS_CLUSTER = env_bool("REDIS_CLUSTER", False)
if REDIS_CLUSTER and not REDIS_URL:
    raise ImproperlyConfigured("REDIS_CLUSTER=true needs REDIS_URL (any node of the cluster)")
# Resharding: how long a command refused with TRYAGAIN (its slot is moving, its keys split
# between two masters) is sent again before it counts as an outage (portal.infra.fastredis).
REDIS_CLUSTER_TRYAGAIN_SECONDS = env_float("REDIS_CLUSTER_TRYAGAIN_SECONDS", 2.0)
if REDIS_CLUSTER_TRYAGAIN_SECONDS < 0:
    raise ImproperlyConfigured("REDIS_CLUSTER_TRYAGAIN_SECONDS must be 0 or more")
# Per process: the size of the sync redis-py client's pool and of the Django cache's (callers
# wait for a free connection). The /v1 hot path uses one pipelined connection per event loop.
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 64)
if REDIS_MAX_CONNECTIONS < 1:
    raise ImproperlyConfigured("REDIS_MAX_CONNECTIONS must be at least 1")

_celery_broker_default = "memory://"
if REDIS_URL:
    try:
        _celery_broker_default = celery_broker_url(REDIS_URL)
    except ValueError as exc:
        raise ImproperlyConfigured(f"REDIS_URL: {exc}") from exc
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": REDIS_URL,
                          "OPTIONS": {"pool_class": "redis.BlockingConnectionPool",
                                      "max_connections": REDIS_MAX_CONNECTIONS,
                                      "timeout": 10}}}
    if REDIS_CLUSTER:
        _cluster_node = parse_redis_url(REDIS_URL)
        if _cluster_node.scheme not in ("redis", "rediss") or _cluster_node.db:
            raise ImproperlyConfigured("REDIS_CLUSTER=true needs a redis:// or rediss:// "
                                       "REDIS_URL naming database 0 (a cluster has no other)")
        if not env_str("CELERY_BROKER_URL"):
            raise ImproperlyConfigured(
                "REDIS_CLUSTER=true: Celery's broker (kombu) cannot use a Redis Cluster; set "
                "CELERY_BROKER_URL to a plain Redis (or another broker)")
        CACHES = {"default": {"BACKEND": "portal.infra.clustercache.RedisClusterCache",
                              "LOCATION": REDIS_URL,
                              "OPTIONS": {"max_connections": REDIS_MAX_CONNECTIONS}}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Gateway -----------------------------------------------------------------------------
# Extra path prefixes the /v1 API is also served under, e.g. "/codex,/openai" makes
# /codex/v1/responses and /codex/responses work.
GATEWAY_PATH_PREFIXES = env_list("GATEWAY_PATH_PREFIXES", ["/codex"])
# Every Redis key the gateway writes starts with this (several deployments, or test
# workers, can share one Redis).
GATEWAY_REDIS_PREFIX = env_str("GATEWAY_REDIS_PREFIX", "gw:") or "gw:"
if REDIS_URL:
    # The cache (allauth's rate limits, sessions' helpers) under Turnpike's prefix too, so
    # two installations (or test runs) on one Redis never share counters.
    CACHES["default"]["KEY_PREFIX"] = cache_prefix(GATEWAY_REDIS_PREFIX)
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                                  "CONFIG": {"hosts": [REDIS_URL],
                                             "prefix": channel_prefix(GATEWAY_REDIS_PREFIX)}}}
# How long a process trusts its in-memory copy of a key/route snapshot before re-reading
# the shared copy; an admin change is visible everywhere within this many seconds.
GATEWAY_SNAPSHOT_TTL = env_float("GATEWAY_SNAPSHOT_TTL", 1.0)
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 32 * 1024 * 1024)
GATEWAY_CONNECT_TIMEOUT = env_float("GATEWAY_CONNECT_TIMEOUT", 10.0)
# Longest silence tolerated between two reads from the upstream (reasoning models can
# think for minutes before the first token).
GATEWAY_READ_TIMEOUT = env_float("GATEWAY_READ_TIMEOUT", 600.0)
# An upstream silent this long mid-stream gets a keep-alive event sent to the client (a
# data-bearing one for Responses clients: the Codex CLI's idle timer ignores comments).
GATEWAY_KEEPALIVE_SECONDS = env_float("GATEWAY_KEEPALIVE_SECONDS", 15.0)
# Responses over WebSocket (GET /v1/responses upgraded; gateway.websocket). Off: the
# upgrade is answered 426, which makes the Codex CLI fall back to HTTP POST at once.
GATEWAY_WEBSOCKETS = env_bool("GATEWAY_WEBSOCKETS", True)
# A socket older than this many seconds takes no new turn: OpenAI's 60 minutes.
GATEWAY_WEBSOCKET_MAX_AGE = env_float("GATEWAY_WEBSOCKET_MAX_AGE", 3600.0)
# Graceful drain on SIGTERM/SIGINT (portal.drain): readiness goes 503 at once; for
# GATEWAY_DRAIN_GRACE_SECONDS the process still serves whatever arrives (answered with
# "Connection: close") while load balancers notice, then stops listening; the requests in
# flight get until GATEWAY_DRAIN_SECONDS after the signal, then the rest are cut (a stream
# ends with its error event). 0: no drain, daphne cancels what is in flight at once.
GATEWAY_DRAIN_SECONDS = env_float("GATEWAY_DRAIN_SECONDS", 30.0)
GATEWAY_DRAIN_GRACE_SECONDS = env_float("GATEWAY_DRAIN_GRACE_SECONDS", 3.0)
GATEWAY_POOL_SIZE = env_int("GATEWAY_POOL_SIZE", 0)  # 0: unbounded connections per process
# A concurrency slot or a balance reservation held by a process that died is freed after
# this many seconds (running requests renew theirs every third of it).
GATEWAY_CONCURRENCY_LEASE_SECONDS = env_float("GATEWAY_CONCURRENCY_LEASE_SECONDS", 90.0)
# Routing: how long a session stays bound to the credential that served it (renewed on use),
# how many upstream attempts one request may make before the client sees the error, the
# cool-down after an upstream 429 that names no Retry-After, and the health probe.
GATEWAY_STICKY_SECONDS = env_int("GATEWAY_STICKY_SECONDS", 3600)
GATEWAY_MAX_ATTEMPTS = env_int("GATEWAY_MAX_ATTEMPTS", 3)
GATEWAY_RETRY_BACKOFF = env_float("GATEWAY_RETRY_BACKOFF", 0.05)
GATEWAY_COOLDOWN_SECONDS = env_float("GATEWAY_COOLDOWN_SECONDS", 30.0)
GATEWAY_HEALTH_INTERVAL = env_float("GATEWAY_HEALTH_INTERVAL", 60.0)
GATEWAY_HEALTH_FAILURES = env_int("GATEWAY_HEALTH_FAILURES", 3)
# Usage rows are queued in memory and written in batches by a background task.
GATEWAY_USAGE_FLUSH_INTERVAL = env_float("GATEWAY_USAGE_FLUSH_INTERVAL", 0.5)
GATEWAY_USAGE_BATCH_SIZE = env_int("GATEWAY_USAGE_BATCH_SIZE", 500)
# A batch of the usage journal claimed by a writer that stopped before writing it goes back
# to the journal after this many seconds (longer than any batch write takes).
GATEWAY_USAGE_CLAIM_SECONDS = env_float("GATEWAY_USAGE_CLAIM_SECONDS", 60.0)
# With Redis, a served request's row is journaled in Redis with its settlement.
# "database": each gateway process also writes the journal to the database (simplest).
# "redis": gateway processes only append to the journal and `manage.py usagewriter` writes
# it: no database work in the serving processes (lower tail latency).
GATEWAY_USAGE_SINK = env_str("GATEWAY_USAGE_SINK", "database") or "database"
if GATEWAY_USAGE_SINK not in ("database", "redis"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("GATEWAY_USAGE_SINK must be 'database' or 'redis'")
# Stored responses (gateway.stored): how long the staged copy of a stored response stays in
# Redis after it was made (reads find it there before the database; capped by the tenant's
# retention). The journal is written by the same writers, batch sizes and claim timeout as
# the usage journal (GATEWAY_USAGE_*).
GATEWAY_STORE_CACHE_SECONDS = env_int("GATEWAY_STORE_CACHE_SECONDS", 3600)
# Body capture (issue 15, gateway.capture), for keys whose tenant or own setting switches it
# on: the request and the response body are each kept up to this many bytes (the rest cut
# and marked truncated), credentials redacted, and deleted after this many hours (the beat
# task gateway.tasks.expire_captures). GATEWAY_CAPTURE_BODIES=false: nothing is captured,
# whatever tenants and keys say.
GATEWAY_CAPTURE_MAX_BYTES = env_int("GATEWAY_CAPTURE_MAX_BYTES", 64 * 1024)
GATEWAY_CAPTURE_RETENTION_HOURS = env_int("GATEWAY_CAPTURE_RETENTION_HOURS", 72)
GATEWAY_CAPTURE_BODIES = env_bool("GATEWAY_CAPTURE_BODIES", True)
# Background responses (gateway.stored.background): one no worker has started after this
# many seconds is failed (the beat task gateway.reap_background; a running one is failed
# when its heartbeat stops for GATEWAY_CONCURRENCY_LEASE_SECONDS).
GATEWAY_BACKGROUND_QUEUE_SECONDS = env_float("GATEWAY_BACKGROUND_QUEUE_SECONDS", 600.0)
# What requests get while Redis is unreachable: "closed" (503 with Retry-After: no request
# goes past limits nobody can count) or "open" (served with this process's own limiter; the
# shared accounts are put right when Redis returns).
GATEWAY_REDIS_FAILURE = env_str("GATEWAY_REDIS_FAILURE", "closed") or "closed"
if GATEWAY_REDIS_FAILURE not in ("closed", "open"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("GATEWAY_REDIS_FAILURE must be 'closed' or 'open'")

# --- Metrics (Prometheus, README "Metrics") ------------------------------------------------
# Off: requests record nothing (the hot path's kill switch) and /metrics answers 404.
GATEWAY_METRICS = env_bool("GATEWAY_METRICS", True)
# A scrape of /metrics must come from one of these addresses or networks, and, when
# METRICS_TOKEN is set, send it as "Authorization: Bearer <token>".
METRICS_TOKEN = env_str("METRICS_TOKEN")
METRICS_ALLOW = env_list("METRICS_ALLOW", ["127.0.0.1/32", "::1/128"])
for _network in METRICS_ALLOW:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"METRICS_ALLOW: {_network!r} is not an IP address or network ({exc})") from exc
# How often each process writes what its requests counted into the shared metric values
# (requests add to plain counters in memory; a scrape sees them at most this late).
METRICS_FLUSH_SECONDS = env_float("METRICS_FLUSH_SECONDS", 1.0)
if not 0 < METRICS_FLUSH_SECONDS <= 60:
    raise ImproperlyConfigured("METRICS_FLUSH_SECONDS must be more than 0 and at most 60")
# The Celery queues whose length /metrics reports (read from the broker at scrape time).
METRICS_CELERY_QUEUES = env_list("METRICS_CELERY_QUEUES", ["celery"])

# --- Operator alerts (gateway.opsalerts; README "Operator alerts") ------------------------
# Where alerts go: email addresses, and webhook URLs each optionally prefixed with its payload
# style: slack+https://…, feishu+https://…, dingtalk+https://…, or plain https://… for the
# generic JSON payload. With neither set, no alert is recorded or sent.
OPERATOR_ALERT_EMAILS = env_list("OPERATOR_ALERT_EMAILS", [])
OPERATOR_ALERT_WEBHOOKS = env_list("OPERATOR_ALERT_WEBHOOKS", [])
for _hook in OPERATOR_ALERT_WEBHOOKS:
    _style, _, _rest = _hook.partition("+")
    if not (_hook.startswith(("http://", "https://")) or (
            _style in ("slack", "feishu", "dingtalk", "json")
            and _rest.startswith(("http://", "https://")))):
        raise ImproperlyConfigured(
            f"OPERATOR_ALERT_WEBHOOKS: {_hook!r} is not an http(s) URL, optionally prefixed "
            "with slack+, feishu+, dingtalk+ or json+")
# The error-rate alert: fires when at least this share (0.2 = 20%) of the requests of the
# last OPERATOR_ALERT_ERROR_WINDOW seconds failed (5xx, or an upstream failure), counted
# only when there were at least OPERATOR_ALERT_ERROR_MIN_REQUESTS of them. 0: off.
OPERATOR_ALERT_ERROR_RATE = env_float("OPERATOR_ALERT_ERROR_RATE", 0.2)
OPERATOR_ALERT_ERROR_WINDOW = env_float("OPERATOR_ALERT_ERROR_WINDOW", 300.0)
OPERATOR_ALERT_ERROR_MIN_REQUESTS = env_int("OPERATOR_ALERT_ERROR_MIN_REQUESTS", 20)
# The usage-spool alert: fires when the oldest row of the usage journal has waited this
# many seconds without any writer moving it.
OPERATOR_ALERT_SPOOL_SECONDS = env_float("OPERATOR_ALERT_SPOOL_SECONDS", 60.0)
# How often the beat task checks the spool and the error rate.
OPERATOR_ALERT_CHECK_INTERVAL = env_float("OPERATOR_ALERT_CHECK_INTERVAL", 15.0)
if not 0 <= OPERATOR_ALERT_ERROR_RATE <= 1:
    raise ImproperlyConfigured("OPERATOR_ALERT_ERROR_RATE must be between 0 and 1")
if OPERATOR_ALERT_ERROR_WINDOW <= 0 or OPERATOR_ALERT_CHECK_INTERVAL <= 0:
    raise ImproperlyConfigured(
        "OPERATOR_ALERT_ERROR_WINDOW and OPERATOR_ALERT_CHECK_INTERVAL must be positive")

# --- Billing -------------------------------------------------------------------------------
# Reservations estimate input tokens from the body size (tokenizing on the hot path costs
# more than the whole request): bytes per token, calibrated on JSON chat/Responses bodies.
BILLING_BYTES_PER_TOKEN = env_float("BILLING_BYTES_PER_TOKEN", 3.0)
# The output a request without max_tokens/max_output_tokens reserves for.
BILLING_DEFAULT_MAX_OUTPUT_TOKENS = env_int("BILLING_DEFAULT_MAX_OUTPUT_TOKENS", 4096)
# Raw usage rows (UsageLog) of local days older than this many days are deleted daily by
# billing.expire_usage, after their day is rolled up (UsageRollup rows are kept for good).
# 0: keep them forever. Deleted in batches of BILLING_USAGE_EXPIRE_BATCH rows.
BILLING_USAGE_RETENTION_DAYS = env_int("BILLING_USAGE_RETENTION_DAYS", 90)
BILLING_USAGE_EXPIRE_BATCH = env_int("BILLING_USAGE_EXPIRE_BATCH", 10_000)
# The minute rollup (billing.rollup_hourly) rolls the hour not over yet up to this many
# seconds ago, and the dashboard reads raw rows only after that: a row written later than
# this after its request started (a stream longer than it) shows there at the next rollup
# (within a minute) instead of at once. Larger: more raw rows read per dashboard view.
BILLING_ROLLUP_SETTLE_SECONDS = env_float("BILLING_ROLLUP_SETTLE_SECONDS", 300.0)
# PostgreSQL: the usage log is partitioned by UTC month (billing.partitions); the daily
# billing.create_usage_partitions task keeps partitions for the current month and this
# many months after it (rows of a month without one wait in the default partition).
BILLING_USAGE_PARTITION_MONTHS_AHEAD = env_int("BILLING_USAGE_PARTITION_MONTHS_AHEAD", 3)
# The currency balances and prices are in (shown by the tenant API; no conversion).
BILLING_CURRENCY = env_str("BILLING_CURRENCY", "USD") or "USD"

# Fernet keys (comma-separated, newest first) that encrypt upstream credentials at rest.
# Unset: one key derived from SECRET_KEY. Rotating: put the new key first, keep the old.
CREDENTIAL_ENCRYPTION_KEYS = env_list("CREDENTIAL_ENCRYPTION_KEYS", [])

# --- Celery --------------------------------------------------------------------------------
# Default: REDIS_URL as kombu reads it (a unix socket as redis+socket://, rediss:// verifying
# certificates unless its ssl_cert_reqs says otherwise; portal.infra.redisurl.celery_broker_url).
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", _celery_broker_default)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", None)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", REDIS_URL is None)
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE = {
    "probe-upstreams": {"task": "gateway.probe_upstreams", "schedule": GATEWAY_HEALTH_INTERVAL},
    # Stored responses: delete those past their tenant's retention; write the store journal
    # (responses staged in Redis) should no gateway process be running to write it.
    "gateway-expire-stored-responses": {"task": "gateway.tasks.expire_stored_responses",
                                        "schedule": 3600.0},
    "gateway-drain-store-journal": {"task": "gateway.drain_store_journal", "schedule": 60.0},
    # Captured bodies past GATEWAY_CAPTURE_RETENTION_HOURS.
    "gateway-expire-captures": {"task": "gateway.tasks.expire_captures", "schedule": 600.0},
    # Background responses whose worker stopped (heartbeat gone) or that none started.
    "gateway-reap-background": {"task": "gateway.reap_background",
                                "schedule": max(5.0, GATEWAY_CONCURRENCY_LEASE_SECONDS / 3)},
    # Billing: daily rollups of today and yesterday, the usage spool (rows kept in Redis
    # while the database was down), raw-log expiry, and the RPD counters of the day that
    # just ended (sent at local midnight, run 30 s later).
    "billing-rollup-usage": {"task": "billing.rollup_usage", "schedule": 600.0},
    # Hourly rollups (the dashboard's today): the current and the previous hour.
    "billing-rollup-usage-hourly": {"task": "billing.rollup_usage_hourly", "schedule": 60.0},
    "billing-drain-usage-spool": {"task": "billing.drain_usage_spool", "schedule": 60.0},
    # Reservations of gateway processes that stopped, and limiter accounts that drifted.
    "billing-reconcile-accounts": {"task": "billing.reconcile_accounts", "schedule": 60.0},
    "billing-expire-usage": {"task": "billing.expire_usage",
                             "schedule": crontab(hour=3, minute=30)},
    # PostgreSQL: usage-log partitions for the months ahead (billing.partitions).
    "billing-create-usage-partitions": {"task": "billing.create_usage_partitions",
                                        "schedule": crontab(hour=3, minute=0)},
    "billing-reset-daily-counters": {"task": "billing.reset_daily_counters",
                                     "schedule": crontab(hour=0, minute=0),
                                     "options": {"countdown": 30}},
    # Operator alerts: the usage spool not moving, and the error rate (gateway.opsalerts).
    "gateway-check-operator-alerts": {"task": "gateway.check_operator_alerts",
                                      "schedule": OPERATOR_ALERT_CHECK_INTERVAL},
    # Portal alerts: low balance (once per crossing), keys expiring soon or near quota.
    "portal-alert-low-balance": {"task": "portal.alert_low_balance", "schedule": 300.0},
    "portal-alert-keys": {"task": "portal.alert_keys", "schedule": 3600.0},
}

# --- Logs and traces (README "Logs", "Traces"; portal.infra.logconfig, gateway.accesslog) ----
# "text" (human-readable, the default) or "json" (one JSON object a line, every logger's).
LOG_FORMAT = (env_str("LOG_FORMAT", "text") or "text").strip().lower()
LOG_LEVEL = (env_str("LOG_LEVEL", "INFO") or "INFO").strip().upper()
# One line per /v1 request on the logger turnpike.access, at INFO whatever LOG_LEVEL is.
GATEWAY_ACCESS_LOG = env_bool("GATEWAY_ACCESS_LOG", True)
# OpenTelemetry traces (gateway.tracing): on only when an OTLP endpoint is set. The SDK reads
# the standard OTEL_* variables itself (headers, timeout, sampler, resource attributes).
TRACING_ENABLED = bool(
    env_str("OTEL_EXPORTER_OTLP_ENDPOINT") or env_str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
) and not env_bool("OTEL_SDK_DISABLED", False)
try:
    LOGGING = logging_config(LOG_FORMAT, LOG_LEVEL, GATEWAY_ACCESS_LOG)
except ValueError as _exc:
    raise ImproperlyConfigured(str(_exc)) from _exc

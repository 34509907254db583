# syntax=docker/dockerfile:1
# Turnpike's image: daphne (uvloop) serving portal.asgi on port 8000. The same image runs the
# Celery worker, beat, the usage writer and the one-off migration (see README, "Deploying").
# Configure it with the environment (README, "Configuration"): DATABASE_URL, REDIS_URL,
# SECRET_KEY, ALLOWED_HOSTS, ...  tests/deploy/test_dockerfile.py checks this file's shape.

# --- build: a virtualenv with Turnpike and its dependencies, and the collected static files.
FROM python:3.11-slim AS build
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=portal.settings
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# The dependencies first (their layer is reused while only the code changes).
COPY pyproject.toml README.md ./
RUN mkdir portal gateway keys billing \
 && pip install --no-cache-dir . \
 && pip uninstall -y turnpike
COPY . .
# Editable install: the code runs from /app, where templates/, static/ and locale/ live beside
# it (settings find them through BASE_DIR). The runtime stage keeps the same paths.
RUN pip install --no-cache-dir --no-deps -e . \
 && SECRET_KEY=build-only python manage.py collectstatic --noinput \
 && python -m compileall -q /app/portal /app/gateway /app/keys /app/billing \
 && pip uninstall -y pip

# --- runtime: the virtualenv, the code and the static files; no compiler, no pip.
FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DJANGO_SETTINGS_MODULE=portal.settings \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 turnpike \
 && useradd --system --uid 10001 --gid turnpike --no-create-home --home-dir /app turnpike
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# The files stay root's and read-only to the process; it writes only to /tmp (Celery beat's
# schedule file, PROMETHEUS_MULTIPROC_DIR when set), which can be a tmpfs.
USER 10001:10001
EXPOSE 8000
# Liveness: the process's event loop answers /healthz (no I/O). Readiness is /readyz, for the
# orchestrator's own probes (compose.yaml, the Helm chart). Other commands (worker, beat)
# replace or disable this check.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# Run `python manage.py migrate --noinput` once per release (a one-off container) before this.
# The worker: `celery -A portal worker`; beat: `celery -A portal beat -s /tmp/celerybeat-schedule`;
# with GATEWAY_USAGE_SINK=redis, `python manage.py usagewriter`.
CMD ["python", "-m", "portal.server", "-b", "0.0.0.0", "-p", "8000", "--proxy-headers"]

# Turnpike. `make run` serves the demo on http://127.0.0.1:8000; `make test` runs the tests.
PY      ?= .venv/bin/python
PORT    ?= 8000
FAKE_PORT ?= 8900
# The tests need PostgreSQL and Redis; these are the defaults on a development machine.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/turnpike
TEST_REDIS_URL    ?= redis://127.0.0.1:6379/15
HELM_SDKPY ?= 0.1.32

.PHONY: help venv run migrate demo fake serve test test-fast typecheck lint worker beat usagewriter bench soak messages

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# helm-sdkpy: the real Helm (v4, as a Go library) for tests/deploy/test_helm.py. Its wheel says
# Python >= 3.12 but is pure Python over cffi and runs on 3.11 (tested), hence not in the extras.
.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --ignore-requires-python 'helm-sdkpy==$(HELM_SDKPY)'
	touch $@

venv: .venv/.installed ## Create .venv and install Turnpike with its test dependencies

migrate: venv ## Apply database migrations
	$(PY) manage.py migrate --noinput

demo: migrate ## Seed the demo tenant, key and upstream; prints the key
	$(PY) manage.py demo --upstream-url http://127.0.0.1:$(FAKE_PORT)/v1 --gateway-url http://127.0.0.1:$(PORT)

run: demo ## Run the fake upstream and the gateway (embedded default: SQLite, no Redis)
	@$(PY) -m tests.fakeupstream --port $(FAKE_PORT) & fake=$$!; \
	trap 'kill $$fake 2>/dev/null' EXIT INT TERM; \
	$(PY) -m portal.server -b 127.0.0.1 -p $(PORT)

serve: venv ## Run only the gateway (daphne + uvloop) with the current environment
	$(PY) -m portal.server -b 0.0.0.0 -p $(PORT)

# The tests' environment: PostgreSQL, Redis and a secret, each overridable from outside.
TEST_ENV = DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} \
	REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} SECRET_KEY=$${SECRET_KEY:-test-secret}

test: venv ## Run the test suite against PostgreSQL and Redis
	$(TEST_ENV) $(PY) -m pytest $(ARGS)

test-fast: venv ## The fast tier: pure in-process tests (marker `fast`, tests/fast/), seconds
	$(TEST_ENV) $(PY) -m pytest --fast $(ARGS)

typecheck: venv ## mypy with the Django plugin (configuration in pyproject.toml)
	$(TEST_ENV) $(PY) -m mypy

lint: venv ## Ruff (style, imports, bugbear, complexity), then the layers (import-linter)
	$(PY) -m ruff check .
	$(dir $(PY))lint-imports

worker: venv ## A Celery worker
	.venv/bin/celery -A portal worker -l info

beat: venv ## Celery beat
	.venv/bin/celery -A portal beat -l info

usagewriter: venv ## Write usage rows pushed to Redis (GATEWAY_USAGE_SINK=redis)
	$(PY) manage.py usagewriter

bench: venv ## The benchmark suite (see BENCHMARKS.md); ARGS=--smoke for a quick run
	$(PY) -m benchmarks.run $(ARGS)

soak: venv ## The soak: 2 gateways, 32-way mixed load, 1% faults (10 min); ARGS=--smoke for CI
	$(PY) -m benchmarks.soak $(ARGS)

# The portal's Chinese catalogue: scan templates and Python, merge into locale/zh_Hans, compile.
I18N_ARGS = -l zh_Hans --ignore=.venv --ignore=benchmarks --ignore=tests --ignore=staticfiles \
	--ignore=test-artifacts
messages: venv ## Update and compile the zh_Hans catalogue (then translate what it reports)
	DATABASE_URL= $(PY) manage.py makemessages $(I18N_ARGS) --no-obsolete --add-location=file
	DATABASE_URL= $(PY) manage.py compilemessages $(I18N_ARGS)
	@msgfmt --statistics -o /dev/null locale/zh_Hans/LC_MESSAGES/django.po

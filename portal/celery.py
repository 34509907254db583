"""The Celery app. Workers: ``celery -A portal worker``; beat: ``celery -A portal beat``."""

from __future__ import annotations

import os

from celery import Celery

from portal.infra import metrics
from portal.infra.logconfig import configure_celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("turnpike")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Task outcomes and durations for /metrics (portal.infra.metrics; README, "Metrics").
metrics.connect_celery()
configure_celery()  # LOG_FORMAT=json: Celery logs through Django's LOGGING

"""Email alerts to a tenant's people: low balance, a key about to expire, a key near its
quota. Run by the Celery tasks in ``portal.tasks`` (scheduled in CELERY_BEAT_SCHEDULE).

Each alert is sent once per occurrence: a flag on the row (``Tenant.low_balance_alerted``,
``ApiKey.expiry_notified``, ``ApiKey.quota_notified``) is claimed by a conditional UPDATE
before the email goes (so two workers running the same schedule send one email), given
back if sending fails, and cleared when the condition ends (the balance is back above the
threshold, the expiry moved away, the quota was raised), so the next occurrence alerts
again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone, translation

from keys.models import ApiKey, Membership, Status, Tenant
from portal.selectors.balance import available

log = logging.getLogger(__name__)

EXPIRY_WARNING = timedelta(days=3)
QUOTA_WARNING = Decimal("0.9")


def portal_url(path: str) -> str:
    base = getattr(settings, "PORTAL_BASE_URL", "") or ""
    return base.rstrip("/") + path if base else path


def recipients(tenant: Tenant, extra_user_ids: Iterable[int] = ()) -> list[tuple[str, str]]:
    """(email, language) of the tenant's owners and admins (and of ``extra_user_ids`` who
    are still members). No per-user language is stored, so every email is in
    settings.LANGUAGE_CODE."""
    rows = (Membership.objects.filter(tenant=tenant)
            .filter(Q(role__in=[Membership.Role.OWNER, Membership.Role.ADMIN])
                    | Q(user_id__in=list(extra_user_ids)))
            .exclude(user__email="").filter(user__is_active=True)
            .values_list("user__email", flat=True).distinct())
    return [(email, settings.LANGUAGE_CODE) for email in sorted(set(rows))]


def _send(template: str, context: dict[str, Any], to: list[tuple[str, str]]) -> int:
    """One message per recipient, rendered in the recipient's language."""
    messages = []
    for email, language in to:
        with translation.override(language):
            subject = render_to_string(f"portal/email/{template}_subject.txt", context)
            body = render_to_string(f"portal/email/{template}_body.txt", context)
        subject = settings.ACCOUNT_EMAIL_SUBJECT_PREFIX + " ".join(subject.split())
        messages.append(EmailMessage(subject=subject, body=body, to=[email]))
    if not messages:
        return 0
    return get_connection().send_messages(messages) or 0


def _claimed(model: type, pk: int, flag: str) -> bool:
    return bool(model.objects.filter(pk=pk, **{flag: False}).update(**{flag: True}))


def _release(model: type, pk: int, flag: str) -> None:
    model.objects.filter(pk=pk).update(**{flag: False})


def check_low_balance() -> int:
    """Email the owners and admins of every tenant whose available balance is below its
    threshold, once per crossing; clear the flag of tenants back above it. Returns the
    emails sent."""
    sent = 0
    # Thresholds removed while alerted: nothing to watch, start afresh if set again.
    Tenant.objects.filter(low_balance_threshold__isnull=True,
                          low_balance_alerted=True).update(low_balance_alerted=False)
    watched = (Tenant.objects.filter(low_balance_threshold__isnull=False, status=Status.ACTIVE)
               .only("pk", "name", "balance", "low_balance_threshold", "low_balance_alerted"))
    for tenant in watched.iterator(chunk_size=500):
        now_available = available(tenant)
        if now_available is None:
            now_available = tenant.balance
        threshold = tenant.low_balance_threshold
        assert threshold is not None
        if now_available >= threshold:
            if tenant.low_balance_alerted:
                Tenant.objects.filter(pk=tenant.pk).update(low_balance_alerted=False)
            continue
        if tenant.low_balance_alerted or not _claimed(Tenant, tenant.pk, "low_balance_alerted"):
            continue
        context = {"tenant": tenant, "available": now_available, "threshold": threshold,
                   "balance": tenant.balance, "url": portal_url(reverse("portal:balance"))}
        try:
            sent += _send("low_balance", context, recipients(tenant))
        except Exception:
            _release(Tenant, tenant.pk, "low_balance_alerted")
            log.exception("low-balance email for tenant %s failed", tenant.pk)
    return sent


def check_keys(now: datetime | None = None) -> dict[str, int]:
    """Email about keys that expire within three days and keys that used 90% of their
    quota, once each; clear the flags of keys whose expiry moved away or whose quota was
    raised (or removed). Returns the emails sent of each kind."""
    now = now or timezone.now()
    soon = now + EXPIRY_WARNING
    ApiKey.objects.filter(expiry_notified=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=soon)).update(expiry_notified=False)
    ApiKey.objects.filter(quota_notified=True).filter(
        Q(quota__isnull=True) | Q(quota=0) | Q(quota_used__lt=F("quota") * QUOTA_WARNING)
    ).update(quota_notified=False)

    live = ApiKey.objects.filter(status=Status.ACTIVE, tenant__status=Status.ACTIVE)
    expiring = live.filter(expiry_notified=False, expires_at__gt=now, expires_at__lte=soon)
    near_quota = live.filter(quota_notified=False, quota__gt=0,
                             quota_used__gte=F("quota") * QUOTA_WARNING)
    sent = {"expiry": 0, "quota": 0}
    for kind, flag, rows in (("expiry", "expiry_notified", expiring),
                             ("quota", "quota_notified", near_quota)):
        for key in rows.select_related("tenant").iterator(chunk_size=500):
            if not _claimed(ApiKey, key.pk, flag):
                continue
            context = {"key": key, "tenant": key.tenant, "masked": key.masked,
                       "url": portal_url(reverse("portal:dashboard"))}
            if kind == "quota" and key.quota:
                context["percent"] = int(key.quota_used * 100 / key.quota)
            extra = [key.created_by_id] if key.created_by_id else []
            try:
                sent[kind] += _send(f"key_{kind}", context, recipients(key.tenant, extra))
            except Exception:
                _release(ApiKey, key.pk, flag)
                log.exception("%s email for key %s failed", kind, key.pk)
    return sent

"""The key form: create and edit, limited to what the tenant's groups allow."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Any

from django import forms
from django.utils import timezone
from django.utils.text import format_lazy
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from keys.fields import split_items
from keys.models import (
    MAX_CAPTURE_DAYS,
    ApiKey,
    Group,
    KeyCapture,
    KeyResponseStorage,
    Tenant,
    capture_window_error,
)
from portal.selectors import keys as selectors

# Limits a group caps (0 on the group: no cap). TPM and quota exist only on keys.
GROUP_CAPPED = ("rpm", "rpd", "concurrency", "max_tokens")

EXPIRY_PRESETS = [
    ("never", gettext_lazy("Never")),
    ("7", gettext_lazy("In 7 days")),
    ("30", gettext_lazy("In 30 days")),
    ("90", gettext_lazy("In 90 days")),
    ("custom", gettext_lazy("On a date")),
]
KEEP = "keep"

GRACE_CHOICES = [
    ("0", gettext_lazy("At once")),
    ("3600", gettext_lazy("After 1 hour")),
    ("86400", gettext_lazy("After 24 hours")),
    ("604800", gettext_lazy("After 7 days")),
]


class ModelChoices(forms.MultipleChoiceField):
    widget = forms.CheckboxSelectMultiple


class KeyForm(forms.Form):
    name = forms.CharField(label=gettext_lazy("Name"), max_length=100)
    group = forms.ChoiceField(label=gettext_lazy("Group"), required=False)
    allowed_models = ModelChoices(
        label=gettext_lazy("Allowed models"), required=False,
        help_text=gettext_lazy("None ticked: every model the group may call."))
    denied_models = ModelChoices(
        label=gettext_lazy("Denied models"), required=False,
        help_text=gettext_lazy("Models this key may never call."))
    rpm = forms.IntegerField(label=gettext_lazy("Requests per minute"), required=False, min_value=0)
    rpd = forms.IntegerField(label=gettext_lazy("Requests per day"), required=False, min_value=0)
    tpm = forms.IntegerField(label=gettext_lazy("Tokens per minute"), required=False, min_value=0,
                             help_text=gettext_lazy("Empty or 0: unlimited."))
    concurrency = forms.IntegerField(label=gettext_lazy("Concurrent requests"), required=False,
                                     min_value=0)
    max_tokens = forms.IntegerField(label=gettext_lazy("Max tokens per request"), required=False,
                                    min_value=0)
    quota = forms.DecimalField(
        label=gettext_lazy("Spending quota"), required=False, min_value=0,
        max_digits=18, decimal_places=6,
        help_text=gettext_lazy("The most this key may spend; empty: no cap."))
    expiry = forms.ChoiceField(
        label=gettext_lazy("Expires"), choices=EXPIRY_PRESETS, initial="never",
        widget=forms.RadioSelect)
    expires_at = forms.DateTimeField(
        label=gettext_lazy("Expiry date and time"), required=False,
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))
    allowed_ips = forms.CharField(
        label=gettext_lazy("IP allow-list"), required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text=gettext_lazy("IP addresses or CIDR ranges (203.0.113.0/24), one per line; "
                               "empty: any address."))
    response_storage = forms.ChoiceField(
        label=gettext_lazy("Response storage"), required=False,
        choices=KeyResponseStorage.choices, initial=KeyResponseStorage.INHERIT,
        help_text=gettext_lazy("Whether this key's /v1/responses answers are kept for "
                               "previous_response_id: as the tenant's settings say, or on or "
                               "off for this key alone."))
    capture_bodies = forms.ChoiceField(
        label=gettext_lazy("Body capture"), required=False, choices=KeyCapture.choices,
        initial=KeyCapture.INHERIT,
        help_text=gettext_lazy("For debugging: keep the bodies of this key's requests and "
                               "answers (credentials redacted, deleted after a few days), "
                               "shown to the tenant's owners on each request's page. As the "
                               "tenant's settings say, on until the time below, or off."))
    capture_bodies_until = forms.DateTimeField(
        label=gettext_lazy("Capture until"), required=False,
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text=format_lazy(gettext_lazy("When capture is on: the time it stops, at most "
                                           "{days} days ahead."), days=MAX_CAPTURE_DAYS))

    def __init__(self, *args: Any, tenant: Tenant, instance: ApiKey | None = None,
                 **kwargs: Any) -> None:
        self.tenant = tenant
        self.instance = instance
        if instance is not None and "initial" not in kwargs:
            kwargs["initial"] = initial_for(instance)
        super().__init__(*args, **kwargs)
        self.groups = selectors.usable_groups(tenant, include=instance.group if instance else None)
        default = tenant.group
        default_label = (_("The tenant's group (%(group)s)") % {"group": default.name}
                         if default else _("The tenant's group (none: no limits)"))
        # The tenant's group is the empty choice (it follows the tenant); offered by name
        # too only when the key already names it.
        current_group = instance.group_id if instance else None
        self.fields["group"].choices = [
            ("", default_label),
            *((str(g.pk), g.name) for g in self.groups
              if g.pk != tenant.group_id or g.pk == current_group)]
        table = selectors.route_table()
        self.callable = {g.pk if g else None: set(selectors.callable_models(g, table))
                         for g in [default, *self.groups]}
        names = set().union(*self.callable.values())
        current = set()
        if instance is not None:
            current = {*instance.allowed_models, *instance.denied_models}
        for name in ("allowed_models", "denied_models"):
            self.fields[name].choices = [(m, m) for m in sorted(names | current)]
        if instance is not None and instance.expires_at is not None:
            when = timezone.localtime(instance.expires_at).strftime("%Y-%m-%d %H:%M")
            self.fields["expiry"].choices = [
                (KEEP, _("Unchanged (%(when)s)") % {"when": when}), *EXPIRY_PRESETS]
        for name in GROUP_CAPPED:
            self.fields[name].help_text = _("Empty: the group's limit. 0: unlimited, only "
                                            "when the group has no limit.")
        self.fields["rpm"].widget.attrs["inputmode"] = "numeric"

    # --- validation ------------------------------------------------------------------

    def clean_group(self) -> Group | None:
        value = self.cleaned_data.get("group")
        if not value:
            return None
        return next(g for g in self.groups if str(g.pk) == value)  # one of the choices

    def clean_allowed_ips(self) -> list[str]:
        entries = split_items(self.cleaned_data.get("allowed_ips") or "")
        bad = []
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                bad.append(entry)
        if bad:
            raise forms.ValidationError(
                _("Not an IP address or CIDR range: %(entries)s.") % {"entries": ", ".join(bad)})
        return entries

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if "group" not in data:
            return data
        group = selectors.effective_group(self.tenant, data["group"])
        self.effective_group = group
        if group is not None:
            for name in GROUP_CAPPED:
                cap = getattr(group, name)
                value = data.get(name)
                if not cap or value is None:
                    continue
                label = self.fields[name].label
                if value == 0:
                    self.add_error(name, _(
                        "%(limit)s cannot be unlimited: the group %(group)s allows at most "
                        "%(cap)s. Leave it empty to use the group's limit.")
                        % {"limit": label, "group": group.name, "cap": cap})
                elif value > cap:
                    self.add_error(name, _(
                        "%(limit)s cannot be more than %(cap)s, the limit of the group "
                        "%(group)s.") % {"limit": label, "group": group.name, "cap": cap})
        callable_now = self.callable.get(group.pk if group else None, set())
        kept = set()
        if self.instance is not None:
            kept = {*self.instance.allowed_models, *self.instance.denied_models}
        for name in ("allowed_models", "denied_models"):
            bad = [m for m in data.get(name) or [] if m not in callable_now and m not in kept]
            if bad:
                self.add_error(name, _(
                    "The group %(group)s cannot call %(models)s.")
                    % {"group": group.name if group else _("(none)"), "models": ", ".join(bad)})
        both = set(data.get("allowed_models") or []) & set(data.get("denied_models") or [])
        if both:
            self.add_error("denied_models", _("A model cannot be both allowed and denied: "
                                              "%(models)s.") % {"models": ", ".join(sorted(both))})
        data["expires_at"] = self._expiry(data)
        data["capture_bodies_until"] = self._capture_until(data)
        return data

    def _capture_until(self, data: dict[str, Any]) -> Any:
        """The end of the key's own capture window: only when capture is "on", then
        required, in the future, at most MAX_CAPTURE_DAYS ahead. The key's current window
        posted back (to the minute: the field has no seconds) is kept as it is, even once
        it has ended."""
        if data.get("capture_bodies") != KeyCapture.ON:
            return None
        until = data.get("capture_bodies_until")
        current = self.instance.capture_bodies_until if self.instance is not None else None
        if until is None:
            self.add_error("capture_bodies_until", _("Pick the time capture stops: it is a "
                                                     "debugging tool that ends by itself."))
            return None
        if current is not None and abs((until - current).total_seconds()) < 60:
            return current
        if until <= timezone.now():
            self.add_error("capture_bodies_until", _("The capture must stop in the future."))
            return None
        error = capture_window_error(until)
        if error:
            self.add_error("capture_bodies_until", error)
        return until

    def _expiry(self, data: dict[str, Any]) -> Any:
        preset = data.get("expiry")
        now = timezone.now()
        if preset == KEEP and self.instance is not None:
            return self.instance.expires_at
        if preset == "never" or not preset:
            return None
        if preset == "custom":
            when = data.get("expires_at")
            if when is None:
                self.add_error("expires_at", _("Pick the date the key expires."))
            elif when <= now:
                self.add_error("expires_at", _("The expiry must be in the future."))
            return when
        return now + timedelta(days=int(preset))

    def settings(self) -> dict[str, Any]:
        """The cleaned values as ``keys.services`` key settings."""
        d = self.cleaned_data
        return {
            "name": d["name"], "group": d["group"], "allowed_models": d["allowed_models"],
            "denied_models": d["denied_models"], "allowed_ips": d["allowed_ips"],
            "rpm": d["rpm"], "rpd": d["rpd"], "tpm": d["tpm"], "concurrency": d["concurrency"],
            "max_tokens": d["max_tokens"], "quota": d["quota"], "expires_at": d["expires_at"],
            "response_storage": d.get("response_storage") or KeyResponseStorage.INHERIT,
            "capture_bodies": d.get("capture_bodies") or KeyCapture.INHERIT,
            "capture_bodies_until": d.get("capture_bodies_until"),
        }


def initial_for(key: ApiKey) -> dict[str, Any]:
    return {
        "name": key.name, "group": str(key.group_id or ""),
        "allowed_models": key.allowed_models, "denied_models": key.denied_models,
        "rpm": key.rpm, "rpd": key.rpd, "tpm": key.tpm, "concurrency": key.concurrency,
        "max_tokens": key.max_tokens, "quota": key.quota,
        "expiry": KEEP if key.expires_at else "never",
        "expires_at": timezone.localtime(key.expires_at) if key.expires_at else None,
        "allowed_ips": "\n".join(key.allowed_ips or []),
        "response_storage": key.response_storage,
        "capture_bodies": key.capture_bodies,
        "capture_bodies_until": (timezone.localtime(key.capture_bodies_until)
                                 if key.capture_bodies_until else None),
    }


class RotateForm(forms.Form):
    grace = forms.ChoiceField(
        label=gettext_lazy("Revoke the old key"), choices=GRACE_CHOICES, initial="0",
        widget=forms.RadioSelect,
        help_text=gettext_lazy("A grace period lets running clients move to the new key first."))

    def grace_period(self) -> timedelta:
        return timedelta(seconds=int(self.cleaned_data["grace"]))

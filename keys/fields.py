"""A list-of-strings model field that works on SQLite and PostgreSQL alike.

Stored as a JSON array; edited in forms as text with one entry per line (commas also split),
so the admin shows ``gpt-5*`` on its own line instead of raw JSON.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.db import models


def split_items(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Normalise user input (``"a, b\\nc"`` or a sequence) to a de-duplicated list."""
    if value is None:
        return []
    raw = value.replace(",", "\n").splitlines() if isinstance(value, str) else list(value)
    seen: dict[str, None] = {}
    for item in raw:
        item = str(item).strip()
        if item:
            seen.setdefault(item, None)
    return list(seen)


class ListFormField(forms.CharField):
    widget = forms.Textarea(attrs={"rows": 3, "cols": 40})

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return "\n".join(str(v) for v in value)
        return super().prepare_value(value)

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        if isinstance(value, (list, tuple)):
            return split_items(value)
        return split_items(super().to_python(value))

    def validate(self, value: Any) -> None:
        if self.required and not value:
            raise forms.ValidationError(self.error_messages["required"], code="required")

    def run_validators(self, value: Any) -> None:
        for item in value or []:
            super().run_validators(item)


class ListField(models.JSONField):
    """JSON array of strings; blank means an empty list."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("default", list)
        kwargs.setdefault("blank", True)
        super().__init__(*args, **kwargs)

    def formfield(self, **kwargs: Any) -> forms.Field:
        defaults: dict[str, Any] = {
            "form_class": ListFormField,
            "required": not self.blank,
            "help_text": self.help_text,
            "label": self.verbose_name.capitalize() if self.verbose_name else None,
        }
        defaults.update(kwargs)
        defaults.pop("encoder", None)
        defaults.pop("decoder", None)
        form_class = defaults.pop("form_class")
        return form_class(**defaults)

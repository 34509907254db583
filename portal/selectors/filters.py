"""What the portal's filter forms above a log share (the usage log, the activity log)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _


class LogFilterForm(forms.Form):
    """A GET form of optional filters with a ``date_from``..``date_to`` range."""

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", _("The end date is before the start date."))
        return data

    @property
    def active(self) -> bool:
        """Whether any filter is set."""
        return self.is_valid() and any(v not in (None, "") for v in self.cleaned_data.values())

    def query_items(self) -> list[tuple[str, str]]:
        """The filters as GET parameters (for links that keep them: pages, export)."""
        if not self.is_bound:
            return []
        return [(name, str(self.data.get(name, ""))) for name in self.fields
                if self.data.get(name)]

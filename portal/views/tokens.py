"""Personal access tokens for the tenant API (``/api/v1``): a user lists, creates and
revokes their own tokens. The secret is rendered once, in the create POST's own response
(``Cache-Control: no-store``); only its hash is kept (``keys.tokens``). Another user's
token id is a 404."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from keys import tokens
from keys.models import AccessToken
from keys.services import ApplicationError
from portal.tenancy import current_memberships, portal_view

EXPIRY_CHOICES = [
    ("30", gettext_lazy("In 30 days")),
    ("7", gettext_lazy("In 7 days")),
    ("90", gettext_lazy("In 90 days")),
    ("365", gettext_lazy("In a year")),
    ("never", gettext_lazy("Never")),
]
SCOPE_CHOICES = [
    (AccessToken.Scope.READ, gettext_lazy("Read-only")),
    (AccessToken.Scope.WRITE, gettext_lazy("Read and write")),
]


class TokenForm(forms.Form):
    name = forms.CharField(label=gettext_lazy("Name"), max_length=100,
                           help_text=gettext_lazy("What the token is for, e.g. a script's "
                                                  "name."))
    scope = forms.ChoiceField(label=gettext_lazy("Access"), choices=SCOPE_CHOICES,
                              initial=AccessToken.Scope.READ, widget=forms.RadioSelect)
    expiry = forms.ChoiceField(label=gettext_lazy("Expires"), choices=EXPIRY_CHOICES,
                               initial="30", widget=forms.RadioSelect)
    tenant = forms.ChoiceField(label=gettext_lazy("Tenant"), required=False,
                               help_text=gettext_lazy("A token bound to a tenant works only "
                                                      "there."))
    staff = forms.BooleanField(label=gettext_lazy("Staff token (operations API)"),
                               required=False)

    def __init__(self, *args: Any, request: HttpRequest, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.memberships = current_memberships(request)
        self.fields["tenant"].choices = [("", _("Any of my tenants (chosen per request)"))] + [
            (str(m.tenant_id), m.tenant.name) for m in self.memberships]
        if not request.user.is_staff:
            del self.fields["staff"]

    def clean_tenant(self) -> Any:
        value = self.cleaned_data.get("tenant")
        return next((m.tenant for m in self.memberships if str(m.tenant_id) == value), None)

    def expires_at(self) -> Any:
        preset = self.cleaned_data["expiry"]
        return None if preset == "never" else timezone.now() + timedelta(days=int(preset))


def _page(request: HttpRequest, form: TokenForm, new: tokens.NewToken | None = None
          ) -> HttpResponse:
    rows = list(AccessToken.objects.filter(user=request.user).select_related("tenant"))
    response = render(request, "portal/tokens.html", {
        "form": form, "rows": rows, "new": new,
        "api_url": request.build_absolute_uri("/api/v1"),
    })
    if new is not None:
        add_never_cache_headers(response)
    return response


@portal_view()
def token_list(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None, request=request)
    if request.method == "POST" and form.is_valid():
        try:
            new = tokens.token_create(
                user=request.user, name=form.cleaned_data["name"],
                scope=form.cleaned_data["scope"], tenant=form.cleaned_data["tenant"],
                staff=bool(form.cleaned_data.get("staff")), expires_at=form.expires_at())
        except ApplicationError as exc:
            form.add_error(None, str(exc))
        else:
            return _page(request, TokenForm(request=request), new)
    return _page(request, form)


@require_POST
@portal_view()
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(AccessToken, pk=pk, user=request.user)
    tokens.token_revoke(token)
    messages.success(request, _("Token %(name)s revoked.") % {"name": token.name})
    return redirect("portal:tokens")

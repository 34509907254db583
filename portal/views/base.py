"""Views every portal page shares: the tenant switcher and the invitation landing page."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from portal import invitations
from portal.tenancy import switch_tenant


@require_POST
def switch(request: HttpRequest) -> HttpResponse:
    """POST tenant=<id>: make it the current tenant (404 unless a member), back to ``next``."""
    if not request.user.is_authenticated:
        return redirect("account_login")
    try:
        tenant_id = int(request.POST.get("tenant", ""))
    except ValueError:
        raise Http404 from None
    if not switch_tenant(request, tenant_id):
        raise Http404
    target = request.POST.get("next") or "portal:dashboard"
    if target.startswith("/") and url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}):
        return redirect(target)
    return redirect("portal:dashboard")


def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """The link in an invitation email: a logged-in user joins at once; anyone else is
    sent to sign up (or log in), and joins right after."""
    found = invitations.invitation_from_token(token)
    if found is None:
        return render(request, "portal/invitation_invalid.html", status=404)
    request.session[invitations.SESSION_KEY] = token
    if request.user.is_authenticated:
        if not invitations.is_for(found, request.user):
            return render(request, "portal/invitation_other_user.html",
                          {"invitation": found}, status=403)
        invitations.accept_pending(request)
        messages.success(request, _("You joined %(tenant)s.") % {"tenant": found.tenant.name})
        return redirect("portal:dashboard")
    from allauth.account.adapter import get_adapter
    from django.contrib.auth import get_user_model

    if get_user_model().objects.filter(email__iexact=found.email).exists():
        return redirect("account_login")
    # The link came to this address, so signing up with it needs no second confirmation.
    get_adapter(request).stash_verified_email(request, found.email)
    return redirect(f"{reverse('account_signup')}?{urlencode({'email': found.email})}")

"""Members of the current tenant: list with roles, invitations, role changes, removal,
leaving; and the tenant's settings (owners only). The rules live in ``keys.membership``."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.text import format_lazy
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from keys import membership as rules
from keys.models import (
    MAX_CAPTURE_DAYS,
    MAX_RETENTION_DAYS,
    Invitation,
    Membership,
    ResponseStorage,
    capture_window_error,
)
from portal import invitations
from portal.tenancy import can, portal_view


def _role_choices(roles: list[rules.Role]) -> list[tuple[str, Any]]:
    return [(role.value, rules.ROLE_LABELS[role]) for role in roles]


class InviteForm(forms.Form):
    email = forms.EmailField(label=gettext_lazy("Email address"), max_length=254)
    role = forms.ChoiceField(label=gettext_lazy("Role"))

    def __init__(self, *args: Any, actor: Membership, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = _role_choices(rules.roles_assignable(actor))
        self.fields["role"].initial = rules.Role.MEMBER
        self.fields["email"].widget.attrs["autocomplete"] = "off"


class TenantSettingsForm(forms.Form):
    members_can_create_keys = forms.BooleanField(
        label=gettext_lazy("Members may create keys"), required=False,
        help_text=gettext_lazy("Members (not only owners and admins) may create keys, and "
                               "change the keys they created."))
    low_balance_threshold = forms.DecimalField(
        label=gettext_lazy("Low-balance alert threshold"), required=False, min_value=0,
        max_digits=18, decimal_places=6,
        help_text=gettext_lazy("Owners and admins get an email when the available balance "
                               "falls below this amount. Empty: no alert."))
    # Not required: a form posted without them (a script written before they existed)
    # keeps the tenant's values, as the admin does.
    response_storage = forms.ChoiceField(
        label=gettext_lazy("Response storage"), choices=ResponseStorage.choices,
        required=False,
        help_text=gettext_lazy("On: answers of /v1/responses are kept, so clients can "
                               "continue a conversation with previous_response_id and read "
                               "it back. Off: zero data retention, nothing of a "
                               "conversation is kept. A key may override this."))
    response_retention_days = forms.IntegerField(
        label=gettext_lazy("Keep stored responses for (days)"), min_value=1,
        max_value=MAX_RETENTION_DAYS, required=False,
        help_text=gettext_lazy("Stored responses are deleted this many days after they "
                               "were made."))
    # Posted empty: capture off; left out of the post altogether: unchanged.
    capture_bodies_until = forms.DateTimeField(
        label=gettext_lazy("Capture request and response bodies until"), required=False,
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text=format_lazy(gettext_lazy(
            "For debugging: until this time the bodies of the requests made with the "
            "tenant's keys, and of their answers, are kept (credentials redacted, deleted "
            "after a few days) and shown to owners on each request's page. Empty: off. At "
            "most {days} days ahead; a key may override it."), days=MAX_CAPTURE_DAYS))

    def __init__(self, *args: Any, capture_until: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.capture_until = capture_until  # the tenant's window now
        for name, field in self.fields.items():
            field.widget.attrs["aria-describedby"] = f"id_{name}_help"

    def clean_capture_bodies_until(self) -> Any:
        """In the future and at most MAX_CAPTURE_DAYS ahead; the current window posted back
        (to the minute: the field has no seconds) is kept as it is."""
        until = self.cleaned_data.get("capture_bodies_until")
        current = self.capture_until
        if until is not None and current is not None and \
                abs((until - current).total_seconds()) < 60:
            return current
        if until is not None:
            if until <= timezone.now():
                raise forms.ValidationError(_("Pick a time in the future, or leave it empty "
                                              "to switch capture off."))
            error = capture_window_error(until)
            if error:
                raise forms.ValidationError(error)
        return until


def _members(request: HttpRequest) -> list[Membership]:
    return list(Membership.objects.filter(tenant=request.tenant)  # type: ignore[attr-defined]
                .select_related("user").order_by("user__email", "pk"))


def _row_context(request: HttpRequest, member: Membership) -> dict[str, Any]:
    actor: Membership = request.membership  # type: ignore[attr-defined]
    manager = can(actor, "manage_members")
    owner_only = member.role == rules.Role.OWNER and actor.role != rules.Role.OWNER
    editable = manager and not owner_only and member.pk != actor.pk
    return {
        "m": member,
        "role_label": rules.ROLE_LABELS[rules.Role(member.role)],
        "can_edit": editable,
        "can_remove": editable,
        "role_choices": _role_choices(rules.roles_assignable(actor)) if editable else [],
    }


@portal_view()
def members(request: HttpRequest) -> HttpResponse:
    actor: Membership = request.membership  # type: ignore[attr-defined]
    manager = can(actor, "manage_members")
    pending = []
    if manager:
        expiry = timezone.now() - invitations.max_age()
        for invitation in rules.pending(request.tenant).select_related(  # type: ignore[attr-defined]
                "invited_by").order_by("-created_at"):
            invitation.expired = invitation.created_at < expiry
            invitation.role_label = rules.ROLE_LABELS[
                rules.Role(invitation.role)]
            pending.append(invitation)
    form = InviteForm(actor=actor) if manager else None
    return render(request, "portal/members.html", {
        "rows": [_row_context(request, m) for m in _members(request)],
        "pending": pending,
        "form": form,
        "manager": manager,
        "me": actor,
    })


@require_POST
@portal_view("manage_members")
def invite(request: HttpRequest) -> HttpResponse:
    actor: Membership = request.membership  # type: ignore[attr-defined]
    form = InviteForm(request.POST, actor=actor)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, error)
        return redirect("portal:members")
    try:
        invitation = rules.invitation_create(
            tenant=request.tenant, email=form.cleaned_data["email"],  # type: ignore[attr-defined]
            role=form.cleaned_data["role"], actor=actor, invited_by=request.user)
    except rules.NotAllowed as exc:
        raise PermissionDenied(str(exc)) from exc
    except rules.MembershipError as exc:
        messages.error(request, str(exc))
        return redirect("portal:members")
    invitations.send(request, invitation)
    messages.success(request, _("Invitation sent to %(email)s.") % {"email": invitation.email})
    return redirect("portal:members")


@require_POST
@portal_view("manage_members")
def revoke(request: HttpRequest, pk: int) -> HttpResponse:
    invitation = get_object_or_404(Invitation, pk=pk, tenant=request.tenant,  # type: ignore[attr-defined]
                                   accepted_at__isnull=True, revoked_at__isnull=True)
    rules.invitation_revoke(invitation=invitation, actor=request.membership)  # type: ignore[attr-defined]
    messages.success(request, _("The invitation to %(email)s was withdrawn.")
                     % {"email": invitation.email})
    return redirect("portal:members")


@require_POST
@portal_view("manage_members")
def set_role(request: HttpRequest, pk: int) -> HttpResponse:
    """Change a member's role; with htmx, answers with the member's table row."""
    target = get_object_or_404(Membership.objects.select_related("user", "tenant"), pk=pk,
                               tenant=request.tenant)  # type: ignore[attr-defined]
    error = None
    try:
        rules.member_set_role(membership=target, role=request.POST.get("role", ""),
                              actor=request.membership)  # type: ignore[attr-defined]
    except rules.NotAllowed as exc:
        if not request.htmx:  # type: ignore[attr-defined]
            raise PermissionDenied(str(exc)) from exc
        error = str(exc)
    except rules.MembershipError as exc:
        error = str(exc)
    if error:
        target.refresh_from_db()
    if request.htmx:  # type: ignore[attr-defined]
        context = _row_context(request, target)
        context["error"] = error
        context["saved"] = error is None
        return render(request, "portal/_member_row.html", context)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, _("%(user)s is now %(role)s.") % {
            "user": target.user.email, "role": rules.ROLE_LABELS[rules.Role(target.role)]})
    return redirect("portal:members")


@require_POST
@portal_view("manage_members")
def remove(request: HttpRequest, pk: int) -> HttpResponse:
    target = get_object_or_404(Membership.objects.select_related("user", "tenant"), pk=pk,
                               tenant=request.tenant)  # type: ignore[attr-defined]
    if target.pk == request.membership.pk:  # type: ignore[attr-defined]
        return leave(request)
    try:
        rules.member_remove(membership=target, actor=request.membership)  # type: ignore[attr-defined]
    except rules.NotAllowed as exc:
        raise PermissionDenied(str(exc)) from exc
    except rules.MembershipError as exc:
        messages.error(request, str(exc))
        return redirect("portal:members")
    messages.success(request, _("%(user)s was removed.") % {"user": target.user.email})
    return redirect("portal:members")


@require_POST
@portal_view()
def leave(request: HttpRequest) -> HttpResponse:
    actor: Membership = request.membership  # type: ignore[attr-defined]
    name = actor.tenant.name
    try:
        rules.member_leave(membership=actor)
    except rules.MembershipError as exc:
        messages.error(request, str(exc))
        return redirect("portal:members")
    from portal.tenancy import SESSION_KEY

    request.session.pop(SESSION_KEY, None)
    messages.success(request, _("You left %(tenant)s.") % {"tenant": name})
    if not Membership.objects.filter(user=request.user).exists():
        return redirect("portal:welcome")
    return redirect("portal:dashboard")


def welcome(request: HttpRequest) -> HttpResponse:
    """Where a user with no tenant lands after logging in or signing up."""
    if not request.user.is_authenticated:
        return redirect("account_login")
    if Membership.objects.filter(user=request.user).exists():
        return redirect("portal:dashboard")
    return render(request, "portal/welcome.html")


@portal_view("manage_tenant")
def tenant_settings(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    if request.method == "POST":
        form = TenantSettingsForm(request.POST, capture_until=tenant.capture_bodies_until)
        if form.is_valid():
            rules.tenant_settings_update(
                tenant=tenant, actor=request.membership,  # type: ignore[attr-defined]
                members_can_create_keys=form.cleaned_data["members_can_create_keys"],
                low_balance_threshold=form.cleaned_data["low_balance_threshold"],
                response_storage=(form.cleaned_data["response_storage"]
                                  or tenant.response_storage),
                response_retention_days=(form.cleaned_data["response_retention_days"]
                                         or tenant.response_retention_days),
                capture_bodies_until=(form.cleaned_data["capture_bodies_until"]
                                      if "capture_bodies_until" in request.POST
                                      else rules.UNCHANGED))
            messages.success(request, _("Settings saved."))
            return redirect("portal:settings")
    else:
        form = TenantSettingsForm(initial={
            "members_can_create_keys": tenant.members_can_create_keys,
            "low_balance_threshold": tenant.low_balance_threshold,
            "response_storage": tenant.response_storage,
            "response_retention_days": tenant.response_retention_days,
            "capture_bodies_until": (timezone.localtime(tenant.capture_bodies_until)
                                     if tenant.capture_bodies_until
                                     and tenant.capture_bodies_until > timezone.now()
                                     else None),
        })
    return render(request, "portal/settings.html", {"form": form})

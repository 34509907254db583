"""Personal access tokens (keys.tokens): shown once, stored hashed, refused when revoked,
expired, or when the user is gone inactive; a staff token is staff only while its user is."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from keys.models import AccessToken, Membership, Tenant
from keys.secrets import hash_secret
from keys.services import ApplicationError
from keys.tokens import authenticate, is_staff_token, token_create, token_revoke

pytestmark = pytest.mark.django_db


@pytest.fixture
def member() -> object:
    user = get_user_model().objects.create_user("ann", "ann@example.com", "pw")
    tenant = Tenant.objects.create(name="acme")
    Membership.objects.create(tenant=tenant, user=user, role=Membership.Role.OWNER)
    return user


def test_the_secret_is_returned_once_and_only_its_hash_is_stored(member) -> None:
    new = token_create(user=member, name="ci", scope="write")
    assert new.secret.startswith("tp_pat_") and len(new.secret) == 50
    stored = AccessToken.objects.get(pk=new.token.pk)
    assert stored.secret_hash == hash_secret(new.secret)
    assert new.secret not in str(stored.__dict__)
    assert authenticate(new.secret) == stored
    assert authenticate(new.secret + "x") is None
    assert authenticate("sk-tp-" + new.secret[7:]) is None
    assert authenticate(None) is None and authenticate("") is None


def test_revoked_expired_and_inactive_tokens_are_refused(member) -> None:
    revoked = token_create(user=member, name="a")
    token_revoke(revoked.token)
    assert authenticate(revoked.secret) is None
    expiring = token_create(user=member, name="b",
                            expires_at=timezone.now() + timedelta(hours=1))
    assert authenticate(expiring.secret) is not None
    AccessToken.objects.filter(pk=expiring.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    assert authenticate(expiring.secret) is None
    active = token_create(user=member, name="c")
    member.is_active = False
    member.save()
    assert authenticate(active.secret) is None


def test_last_used_is_written_at_most_once_a_minute(member, django_assert_num_queries) -> None:
    new = token_create(user=member, name="a")
    with django_assert_num_queries(2):  # the lookup and the last_used_at update
        authenticate(new.secret)
    with django_assert_num_queries(1):
        authenticate(new.secret)


def test_bad_input_is_refused_with_a_message(member) -> None:
    other = Tenant.objects.create(name="other")
    with pytest.raises(ApplicationError, match="not a member"):
        token_create(user=member, name="x", tenant=other)
    with pytest.raises(ApplicationError, match="not staff"):
        token_create(user=member, name="x", staff=True)
    with pytest.raises(ApplicationError, match="scope"):
        token_create(user=member, name="x", scope="admin")
    with pytest.raises(ApplicationError, match="name"):
        token_create(user=member, name=" ")
    with pytest.raises(ApplicationError, match="past"):
        token_create(user=member, name="x", expires_at=timezone.now() - timedelta(days=1))


def test_a_staff_token_is_staff_only_while_its_user_is(member) -> None:
    member.is_staff = True
    member.save()
    new = token_create(user=member, name="ops", staff=True, scope="write")
    assert is_staff_token(authenticate(new.secret))
    member.is_staff = False
    member.save()
    token = authenticate(new.secret)
    assert token is not None and not is_staff_token(token)

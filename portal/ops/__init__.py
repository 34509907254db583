"""The operations API (Django REST framework) at ``/api/ops/``: staff-only automation of
what the admin does. Schema and docs: ``/api/ops/schema/``, ``/api/ops/docs/``,
``/api/ops/redoc/`` (drf-spectacular, assets vendored by drf-spectacular-sidecar)."""

"""The user portal's views. Each one is a ``portal_view`` (login, tenant, role); reads go
through selectors filtered by ``request.tenant``, writes through the services the admin and
the CLI use (``keys.services``, ``billing.services``)."""

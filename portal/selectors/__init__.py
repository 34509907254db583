"""Reads for the portal pages, always filtered by the current tenant."""

"""Pagination: numbered pages for the tables an operator browses, a cursor for the usage
log (millions of rows: no COUNT, and stable while rows are added)."""

from __future__ import annotations

from rest_framework.pagination import CursorPagination, PageNumberPagination


class PagePagination(PageNumberPagination):
    """``?page=2&page_size=100`` (at most 500 a page)."""

    page_size_query_param = "page_size"
    max_page_size = 500


class UsageCursorPagination(CursorPagination):
    """``next``/``previous`` links carry an opaque ``cursor``; newest first by default,
    ``?ordering=`` picks another field."""

    ordering = "-created_at"
    page_size_query_param = "page_size"
    max_page_size = 500

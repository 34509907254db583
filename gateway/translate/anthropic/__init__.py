"""Anthropic Messages: build ``/v1/messages`` bodies from canonical requests and decode its
answers (JSON or SSE) into canonical events.

Anthropic differs from the OpenAI protocols in ways that shape this package:

* the system prompt is a top-level field, not a message;
* ``messages`` must alternate user/assistant, and tool results are user content that must
  follow the assistant turn that made the calls, leading that user message;
* ``max_tokens`` is required, and extended thinking is a token budget, not an effort level;
* signed thinking blocks must be replayed after tool use; they travel through Responses
  clients sealed in ``encrypted_content`` (``canonical.seal_reasoning``);
* usage excludes cache reads from ``input_tokens`` where OpenAI includes them.

Pure: no I/O, no Django.

One module per direction (see ``gateway/translate/__init__.py``)::

    build.py   canonical -> upstream request        build_request
    decode.py  upstream answer -> canonical events  decode_response, StreamDecoder,
                                                    finish_reason, usage_from_anthropic

Callers use the names re-exported here (``anthropic.build_request``...).
"""

from gateway.translate.anthropic.build import build_request
from gateway.translate.anthropic.decode import (
    StreamDecoder,
    decode_response,
    finish_reason,
    usage_from_anthropic,
)

__all__ = ["StreamDecoder", "build_request", "decode_response", "finish_reason",
           "usage_from_anthropic"]

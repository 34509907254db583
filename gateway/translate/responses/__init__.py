"""OpenAI Responses: client requests in, client answers out (the full event sequence strict
clients and the Codex CLI need), and the same protocol as an upstream.

One module per direction (see ``gateway/translate/__init__.py``)::

    parse.py   client request -> canonical          parse_request, parse_item
    build.py   canonical -> upstream request        build_request, item_to_responses
    decode.py  upstream answer -> canonical events  decode_response, decode_item, StreamDecoder
    encode.py  canonical events -> client answer    ResponsesEncoder, new_id

Callers use the names re-exported here (``responses.parse_request``...).
"""

from gateway.translate.responses.build import build_request, item_to_responses
from gateway.translate.responses.decode import StreamDecoder, decode_item, decode_response
from gateway.translate.responses.encode import ResponsesEncoder, new_id
from gateway.translate.responses.parse import COMPACTION_PREAMBLE, parse_item, parse_request

__all__ = [
    "COMPACTION_PREAMBLE",
    "ResponsesEncoder",
    "StreamDecoder",
    "build_request",
    "decode_item",
    "decode_response",
    "item_to_responses",
    "new_id",
    "parse_item",
    "parse_request",
]

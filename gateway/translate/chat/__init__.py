"""OpenAI Chat Completions: client requests in, client answers out, and the same protocol
as an upstream (requests built, answers decoded).

One module per direction (see ``gateway/translate/__init__.py``)::

    parse.py   client request -> canonical          parse_request
    build.py   canonical -> upstream request        build_request
    decode.py  upstream answer -> canonical events  decode_response, StreamDecoder
    encode.py  canonical events -> client answer    ChatEncoder

Callers use the names re-exported here (``chat.parse_request``...).
"""

from gateway.translate.chat.build import build_request
from gateway.translate.chat.decode import StreamDecoder, decode_response
from gateway.translate.chat.encode import ChatEncoder
from gateway.translate.chat.parse import parse_request

__all__ = ["ChatEncoder", "StreamDecoder", "build_request", "decode_response", "parse_request"]

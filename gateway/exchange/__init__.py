"""One request's exchange with its upstream: choose how, send, and relay the answer.

    passthrough   the upstream speaks the client's protocol and needs no fixing (an
                  ``openai`` upstream, or raw mode): the client's bytes go up (touched only
                  for the model name, effort, usage metering and model rules) and the
                  upstream's events come back byte for byte.
    translated    anything else: client body -> canonical -> upstream body; upstream
                  JSON/SSE/NDJSON -> canonical events -> the client's protocol. Codex-style
                  upstreams always take this path (forced streaming, fixed requests, XML
                  tool text cleaned, non-stream answers aggregated).
    compaction    /v1/responses/compact, or an input ending in ``compaction_trigger``, for an
                  upstream without native compaction: Turnpike summarises the history with
                  the routed model and answers with its own compaction item.

The modules, in the order a request meets them:

    attempts      ``run``: the routes in order, failover, credential cool-down and disable;
                  ``run_route``: which path one route takes
    passthrough   the passthrough path, JSON and streamed answers
    translated    the translated path (``pump``: decode, re-encode, keep alive)
    compaction    the compaction path
    upstream      what every path shares: the upstream call, reading its answer, and the
                  failures of a 2xx answer, noted on the request's ``Outcome``

``run`` is the entry point (``gateway.pipeline``); everything the exchange comes to is
written to the ``Outcome`` it is given.
"""

from gateway.exchange.attempts import raw_mode, run, run_route
from gateway.exchange.compaction import has_compaction_trigger

__all__ = ["has_compaction_trigger", "raw_mode", "run", "run_route"]

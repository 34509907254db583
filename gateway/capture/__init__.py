"""Body capture for debugging (issue 15): a request's body as received and its answer as
sent, for the keys whose tenant or own setting switches capture on for a while.

    recorder   on the request path: ``begin`` (after the body is read, only when the key's
               ``KeySnapshot.capture_until`` is set: one attribute check when capture is
               off), ``Capture.response`` (each body chunk the client is sent, from
               ``gateway.respond``), ``finish`` (after the answer: queued, never awaited)
    records    a capture as queued (raw bytes) and as stored: cut at
               GATEWAY_CAPTURE_MAX_BYTES, credentials redacted (``redact``), text
    redact     credentials out of bodies and headers
    store      the writer (``portal.infra.journal.BatchWriter``, as the usage rows'): batches
               written to ``gateway.CapturedExchange`` in a worker thread, through the Redis
               journal when the database refuses them or GATEWAY_USAGE_SINK=redis;
               retention (``expire``)

Redaction runs in the writer's thread, never on the event loop, and before anything is
written to Redis or the database.
"""

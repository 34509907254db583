"""The process-wide infrastructure every app uses: the Redis connections (``redis``, the hot
path's ``fastredis``, ``redisurl``), Redis's health (``redishealth``), every Redis key's name
(``rediskeys``), the layered snapshot cache (``snapshots``) and work to finish before daphne
stops (``shutdown``).

A plain package, not a Django app: no models. It sits below every app and imports none of
them, nor the rest of ``portal``: only the settings and third-party libraries (README,
"Layers"; ``make lint`` checks it).
"""

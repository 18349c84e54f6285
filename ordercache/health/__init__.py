"""Health: :mod:`~ordercache.health.readiness` (the readiness checks and their verdict)
and :mod:`~ordercache.health.redis_info` (the Redis write probe and INFO monitoring).
The HTTP routes are in :mod:`ordercache.web.health`."""

"""The cache: typed cache-aside over Redis with version-guarded fills.

* :mod:`~ordercache.cache.keys` — every key, id validation and the TTL policy;
* :mod:`~ordercache.cache.codec` — the views' specs and entry encoding;
* :mod:`~ordercache.cache.interface` — the ``Cache`` protocol callers depend on;
* :mod:`~ordercache.cache.service` — ``CacheService``, its implementation;
* :mod:`~ordercache.cache.backend` — the Redis boundary (commands, Lua, errors);
* :mod:`~ordercache.cache.ops` — operations as data (``Invalidate``, ``Refresh``);
* :mod:`~ordercache.cache.breaker`, :mod:`~ordercache.cache.singleflight`,
  :mod:`~ordercache.cache.metrics`.
"""

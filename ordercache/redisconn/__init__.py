"""Redis connections: :mod:`~ordercache.redisconn.client` (one factory for standalone,
Sentinel and Cluster, TLS/ACL, pools, timeouts, retries) and
:mod:`~ordercache.redisconn.scripts` (the one Lua script loader)."""

"""The local default: :mod:`~ordercache.local.services` (the private broker and
redis-server processes) and :mod:`~ordercache.local.traffic` (seed and sample traffic)."""

"""Faust tables (changelog-backed state): :mod:`~ordercache.tables.dlq_stats`."""

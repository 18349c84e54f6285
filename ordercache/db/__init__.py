"""The system of record: :mod:`~ordercache.db.engine` (engines, sessions, schema),
:mod:`~ordercache.db.repository` (the views' queries), :mod:`~ordercache.db.loaders`
(the read path's database fallback) and :mod:`~ordercache.db.migrate` (Alembic)."""

"""Data shapes: :mod:`~ordercache.models.events` (change events, pydantic),
:mod:`~ordercache.models.orm` (the SQLAlchemy schema), :mod:`~ordercache.models.views`
(the cached views)."""

"""Stream processors: change events -> cache operations (and tracking -> streams).

* :mod:`~ordercache.agents.decode` — bytes in, a validated event or a ``DecodeError``;
* :mod:`~ordercache.agents.plan` — event -> cache operations (pure);
* :mod:`~ordercache.agents.batch` — a batch of records -> one :class:`BatchPlan` (pure);
* :mod:`~ordercache.agents.pipeline` — the change pipeline service (consume, apply, commit);
* :mod:`~ordercache.agents.tracking` — the batch hook that mirrors tracking into streams;
* :mod:`~ordercache.agents.dlq` — dead letters: their format, building and counting;
* :mod:`~ordercache.agents.metrics` — the pipeline's Prometheus series.

The worker's wiring (:mod:`ordercache.app.wiring`) assembles them.
"""

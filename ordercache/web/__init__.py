"""The worker's HTTP side (Faust web views) and its background monitor.

Routes: ``/orders/{id}``, ``/customers/{id}/orders``, ``/products/{id}/inventory``
(:mod:`.read_api`), ``/health/live``, ``/health/ready`` (:mod:`.health`; the checks
themselves live in :mod:`ordercache.health`), ``/metrics`` (:mod:`.metrics`),
``/stats`` (:mod:`.stats`). :mod:`ordercache.app.wiring` registers them.
"""

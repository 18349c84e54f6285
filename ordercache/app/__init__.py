"""The Faust app and its wiring: :mod:`~ordercache.app.main` (the console script),
:mod:`~ordercache.app.faust_app`, :mod:`~ordercache.app.context` (shared resources),
:mod:`~ordercache.app.wiring` (typed assembly of the subsystems) and
:mod:`~ordercache.app.commands` (the CLI commands)."""

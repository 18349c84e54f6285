"""Configuration: :mod:`~ordercache.config.settings` (every ``ORDERCACHE_*`` variable,
read once, validated with one-line errors) and :mod:`~ordercache.config.doc` (the
generated docs/configuration.md)."""

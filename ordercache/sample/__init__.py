"""Sample data and traffic: :mod:`~ordercache.sample.seed` (bulk seeding, from
:mod:`~ordercache.sample.seed_data` and :mod:`~ordercache.sample.seed_timeline`),
:mod:`~ordercache.sample.writes` (the transactional writer), :mod:`~ordercache.sample.producer`
(change events in Debezium's envelope or the outbox form) and
:mod:`~ordercache.sample.simulate` (order lifecycles at a rate)."""

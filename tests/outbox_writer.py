"""A writer process that dies right after its commit (run by tests/test_outbox_relay.py).

``python -m tests.outbox_writer DATABASE_URL ORDER_ID STATUS``: one transaction sets
the order's status through ordercache.sample.writes and records its outbox rows; right
after the commit, before anything could be sent, the process kills itself (SIGKILL).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime

from ordercache.db.engine import create_engine, session_factory
from ordercache.sample import writes


async def main(url: str, order_id: int, status: str) -> None:
    engine = create_engine(url)
    sessions = session_factory(engine)
    now = datetime.now(UTC)
    async with sessions() as s, s.begin():
        changes = await writes.set_status(s, order_id, status, now)
        await writes.record_outbox(s, changes, now)
    # Committed. A commit-then-send writer would send the events now; die instead.
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))

"""The failover re-apply window (pure: a fake clock)."""

from __future__ import annotations

from ordercache.agents.recent import RecentWindow


def test_items_leave_the_window_when_it_passes() -> None:
    now = [100.0]
    w = RecentWindow[str](30.0, clock=lambda: now[0])
    assert not w
    w.add(["a", "b"])
    now[0] = 120.0
    w.add(["c"])
    assert w.items() == ["a", "b", "c"]
    now[0] = 130.0  # exactly the window: still inside
    assert w.items() == ["a", "b", "c"]
    now[0] = 130.5
    assert w.items() == ["c"]
    now[0] = 151.0
    assert w.items() == []
    assert not w

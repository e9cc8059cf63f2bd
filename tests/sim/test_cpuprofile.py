"""Stacks sampled from a process, summed into the parts a benchmark reports."""

from __future__ import annotations

from azure_cni_sim.cpuprofile import by_part

PARTS = [("events", ["process_resource_event", "watch_objs"]),
         ("sweep", ["PoolController.sweep"])]

LOOP = "main (m.py:1);Handle._run (events.py:80)"
RAW = "\n".join([
    "main (m.py:1);BaseEventLoop._run_once (base_events.py:1);"
    "EpollSelector.select (selectors.py:468) 500",
    "Thread.run (threading.py:975);_worker (concurrent/futures/thread.py:81) 900",
    f"{LOOP};worker (queueing.py:1);process_resource_event (processing.py:9);"
    "loads (json/__init__.py:346) 30",
    f"{LOOP};PoolController.sweep (controller.py:5);listed_nic (armjson.py:2) 10",
    f"{LOOP};LeaderElector.hold (lease.py:3) 10",
])


def test_idle_stacks_are_left_out_and_the_rest_go_to_their_first_part() -> None:
    result = by_part(RAW, PARTS, rate=100)
    assert result["cpu_seconds_sampled"] == 0.5  # 50 busy samples at 100/s
    assert result["share"] == {"events": 0.6, "sweep": 0.2, "other": 0.2}


def test_nothing_sampled_is_no_share_rather_than_a_division_by_zero() -> None:
    assert by_part("", PARTS, rate=100) == {
        "cpu_seconds_sampled": 0.0, "share": {"events": 0.0, "sweep": 0.0, "other": 0.0}}

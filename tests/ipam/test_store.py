"""The node store: one address per attachment, durable, and it refuses duplicates itself."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from azure_cni.api.attachment import AttachmentKey
from azure_cni.ipam.store import (
    SCHEMA_VERSION,
    AddressStore,
    Clock,
    DuplicateAssignment,
    StoreError,
    read_boot_id,
)

A = AttachmentKey("c1", "eth0")
B = AttachmentKey("c2", "eth0")


class FakeClock:
    """A machine's clocks, moved by the test: seconds since boot, wall time, boot id."""

    def __init__(self, since_boot: float = 1000.0, wall: float = 1_800_000_000.0,
                 boot_id: str = "boot-1") -> None:
        self.now, self.wall_now, self.id = since_boot, wall, boot_id

    def clock(self) -> Clock:
        return Clock(since_boot=lambda: self.now, wall=lambda: self.wall_now,
                     boot_id=lambda: self.id)

    def advance(self, seconds: float) -> None:
        """Time passes: both clocks move."""
        self.now += seconds
        self.wall_now += seconds

    def reboot(self, down_for: float) -> None:
        self.id += "'"
        self.now = 5.0
        self.wall_now += down_for


def cooling(store: AddressStore, clock: FakeClock) -> set[str]:
    return {a for a, r in store.releases().items() if r.cool_until > clock.now}


def first_free(addresses: list[str]):
    def choose(taken, released):
        return next((a for a in addresses if a not in taken), None)
    return choose


@pytest.fixture
def store(tmp_path: Path):
    s = AddressStore(tmp_path / "state" / "ipam.db")
    yield s
    s.close()


def test_assign_get_release_round_trip(tmp_path: Path) -> None:
    clock = FakeClock(since_boot=200.0)
    store = AddressStore(tmp_path / "ipam.db", clock.clock())
    made = store.assign(A, netns="/run/netns/a", host_veth="azv1", pod="ns/a",
                        choose=first_free(["198.18.0.10"]), now=100.0)
    assert made is not None and made.address == "198.18.0.10" and made.assigned_at == 100.0
    assert store.get(A) == made
    assert store.count() == 1
    gone = store.release(A, cooldown_seconds=30)
    assert gone == made
    assert store.get(A) is None
    assert store.releases()["198.18.0.10"].cool_until == 230.0
    assert store.release(A, cooldown_seconds=30) is None, "releasing twice is a no-op"
    store.close()


def test_chooser_sees_taken_and_released_addresses(store: AddressStore) -> None:
    store.assign(A, netns="n", host_veth="azv1", pod="", choose=first_free(["198.18.0.10"]))
    store.assign(B, netns="n", host_veth="azv2", pod="",
                 choose=first_free(["198.18.0.10", "198.18.0.11"]))
    store.release(B, cooldown_seconds=10)
    seen = {}

    def spy(taken, released):
        seen["taken"], seen["released"] = taken, dict(released)

    assert store.assign(AttachmentKey("c3", "eth0"), netns="n", host_veth="azv3", pod="",
                        choose=spy) is None
    assert seen["taken"] == frozenset({"198.18.0.10"})
    assert set(seen["released"]) == {"198.18.0.11"}
    assert store.count() == 1, "a chooser that finds nothing records nothing"


@pytest.mark.parametrize("second", [
    AttachmentKey("c1", "eth0"),  # same key
    AttachmentKey("c9", "eth0"),  # same address (a broken chooser)
])
def test_database_refuses_duplicates(store: AddressStore, second: AttachmentKey) -> None:
    store.assign(A, netns="n", host_veth="azv1", pod="", choose=lambda t, r: "198.18.0.10")
    with pytest.raises(DuplicateAssignment):
        store.assign(second, netns="n", host_veth="azv9", pod="",
                     choose=lambda t, r: "198.18.0.10")
    assert [a.key for a in store.assignments()] == [A]


def test_assignments_survive_reopening_and_a_second_process_sees_them(tmp_path: Path) -> None:
    path = tmp_path / "ipam.db"
    clock = FakeClock(since_boot=10.0)
    first = AddressStore(path, clock.clock())
    first.assign(A, netns="n", host_veth="azv1", pod="", choose=lambda t, r: "198.18.0.10")
    first.release(A, cooldown_seconds=30)
    first.assign(B, netns="n", host_veth="azv2", pod="", choose=lambda t, r: "198.18.0.11")
    # no close(): as after kill -9, the committed rows are in the WAL
    raw = sqlite3.connect(str(path))
    assert raw.execute("SELECT address FROM assignments").fetchall() == [("198.18.0.11",)]
    raw.close()
    second = AddressStore(path, clock.clock())
    assert second.get(B) is not None
    assert second.releases()["198.18.0.10"].cool_until == 40.0
    first.close()
    second.close()


def test_cooldowns_do_not_follow_the_wall_clock(tmp_path: Path) -> None:
    """An NTP step must neither stretch a cooldown (a step back by an hour kept every freed
    address cooling for an hour) nor cut it short (a step forward)."""
    clock = FakeClock()
    store = AddressStore(tmp_path / "ipam.db", clock.clock())
    for key, address in ((A, "198.18.0.10"), (B, "198.18.0.11")):
        store.assign(key, netns="n", host_veth=f"azv-{key.container_id}", pod="",
                     choose=lambda t, r, a=address: a)
    store.release(A, cooldown_seconds=30)
    clock.wall_now -= 3600
    store.release(B, cooldown_seconds=30)
    clock.wall_now += 7200
    clock.advance(29)
    assert cooling(store, clock) == {"198.18.0.10", "198.18.0.11"}, "a step forward: still"
    clock.advance(2)
    assert cooling(store, clock) == set(), "30 s later, whatever the wall clock did"
    store.close()


def test_a_restart_continues_the_cooldown(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "ipam.db"
    first = AddressStore(path, clock.clock())
    first.assign(A, netns="n", host_veth="azv1", pod="", choose=lambda t, r: "198.18.0.10")
    first.release(A, cooldown_seconds=30)
    first.close()
    clock.advance(20)
    clock.wall_now -= 3600  # and the wall clock was stepped back meanwhile
    second = AddressStore(path, clock.clock())
    clock.advance(9)
    assert cooling(second, clock) == {"198.18.0.10"}
    clock.advance(2)
    assert cooling(second, clock) == set()
    second.close()


@pytest.mark.parametrize(("down_for", "left"), [
    (10.0, 20.0),     # released 10 s before a quick reboot: 20 s to go
    (3600.0, 0.0),    # long over
    (-7200.0, 30.0),  # the wall clock is behind after the reboot: full cooldown, no more
])
def test_a_reboot_carries_the_cooldown_over_on_the_wall_clock(tmp_path: Path, down_for: float,
                                                              left: float) -> None:
    clock = FakeClock()
    path = tmp_path / "ipam.db"
    first = AddressStore(path, clock.clock())
    first.assign(A, netns="n", host_veth="azv1", pod="", choose=lambda t, r: "198.18.0.10")
    first.release(A, cooldown_seconds=30)
    first.close()
    clock.reboot(down_for)
    second = AddressStore(path, clock.clock())
    rebased = second.releases()
    assert rebased["198.18.0.10"].cool_until - clock.now == pytest.approx(left)
    second.close()
    third = AddressStore(path, clock.clock())
    assert third.releases() == rebased, "rebased once, in place"
    third.close()


def older_store(directory: Path, script: str) -> Path:
    """A store file an older agent wrote: the assignments table of schemas 1 and 2 (schema 3
    added ``network``), then ``script``."""
    path = directory / "ipam.db"
    old = sqlite3.connect(str(path))
    old.executescript(
        "CREATE TABLE assignments (container_id TEXT NOT NULL, ifname TEXT NOT NULL, "
        "address TEXT NOT NULL, netns TEXT NOT NULL, host_veth TEXT NOT NULL, "
        "pod TEXT NOT NULL, assigned_at REAL NOT NULL, PRIMARY KEY (container_id, ifname));"
        + script)
    old.close()
    return path


def test_a_schema_1_store_is_migrated_with_its_cooldowns(tmp_path: Path) -> None:
    """Schema 1 kept cooldowns on the wall clock."""
    clock = FakeClock()
    path = older_store(
        tmp_path, "CREATE TABLE releases (address TEXT PRIMARY KEY, released_at REAL NOT NULL, "
        "cool_until REAL NOT NULL);"
        "INSERT INTO assignments VALUES ('c1', 'eth0', '198.18.0.11', 'n', 'azv1', '', 5);"
        f"INSERT INTO releases VALUES ('198.18.0.10', {clock.wall_now - 10}, "
        f"{clock.wall_now + 20});"
        "PRAGMA user_version=1;")
    store = AddressStore(path, clock.clock())
    assert store.get(A) is not None
    (release,) = store.releases().values()
    assert release.cool_until - clock.now == pytest.approx(20.0)
    assert int(store._db.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION
    store.close()


def test_a_schema_2_store_is_migrated_its_attachments_and_requests_read_as_before(
        tmp_path: Path) -> None:
    path = older_store(
        tmp_path, "CREATE TABLE pod_requests (address TEXT PRIMARY KEY, pod TEXT NOT NULL, "
        "public_ip TEXT NOT NULL, backend_pools TEXT NOT NULL, "
        "withdrawn INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO assignments VALUES ('c1', 'eth0', '198.18.0.11', 'n', 'azv1', 'a/b', 5);"
        "INSERT INTO pod_requests VALUES ('198.18.0.11', 'a/b', 'web', '', 0);"
        "PRAGMA user_version=2;")
    store = AddressStore(path)
    kept = store.get(A)
    assert kept is not None and (kept.address, kept.pod, kept.network) == (
        "198.18.0.11", "a/b", "")
    (request,) = store.pod_requests()
    assert (request.address, request.public_ip, request.pod_uid) == ("198.18.0.11", "web", "")
    made = store.assign(B, netns="n2", host_veth="azv2", pod="", network="azure-cni",
                        choose=first_free(["198.18.0.11", "198.18.0.12"]))
    assert made is not None and made.network == "azure-cni"
    store.close()
    reopened = AddressStore(path)
    assert [a.network for a in reopened.assignments()] == ["", "azure-cni"]
    assert int(reopened._db.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION
    reopened.close()


def test_the_real_clock_is_the_boot_clock() -> None:
    clock = Clock()
    assert read_boot_id() and clock.boot_id() == read_boot_id()
    assert abs(clock.since_boot() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 5


def test_wal_and_synchronous_full(store: AddressStore) -> None:
    db = sqlite3.connect(str(store.path))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_concurrent_stores_never_hand_out_one_address_twice(tmp_path: Path) -> None:
    path = tmp_path / "ipam.db"
    pool = [f"198.18.0.{i}" for i in range(10, 50)]
    got: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        s = AddressStore(path)
        for i in range(10):
            made = s.assign(AttachmentKey(f"w{n}-{i}", "eth0"), netns="n",
                            host_veth=f"azv{n}-{i}", pod="", choose=first_free(pool))
            if made:
                with lock:
                    got.append(made.address)
        s.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 40 and len(set(got)) == 40


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ipam.db"
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA user_version=7")
    db.close()
    with pytest.raises(StoreError, match="schema version 7"):
        AddressStore(path)


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ipam.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a readable sqlite database"):
        AddressStore(path)


def test_forget_releases(store: AddressStore) -> None:
    store.assign(A, netns="n", host_veth="azv1", pod="", choose=lambda t, r: "198.18.0.10")
    store.release(A, cooldown_seconds=5)
    store.forget_releases(["198.18.0.10"])
    assert store.releases() == {}


def test_rebind_hands_the_address_over_without_freeing_it(store, tmp_path) -> None:
    made = store.assign(A, netns="", host_veth="v-a", pod="", choose=first_free(["10.0.0.5"]),
                        now=5.0)
    assert made is not None
    moved = store.rebind(A, B, netns="/run/netns/b", host_veth="v-b", pod="docker/b")
    assert moved is not None
    assert (moved.key, moved.address, moved.assigned_at) == (B, "10.0.0.5", 5.0)
    assert store.get(A) is None and store.get(B) == moved
    assert store.releases() == {}, "the address never went through a release"
    # survives a reopen, like every other write
    store.close()
    reopened = AddressStore(tmp_path / "state" / "ipam.db")
    try:
        assert reopened.get(B) == moved
        assert reopened.rebind(A, B, netns="", host_veth="v", pod="") is None
    finally:
        reopened.close()


def test_rebind_refuses_to_take_another_attachments_key_or_veth(store) -> None:
    store.assign(A, netns="", host_veth="v-a", pod="", choose=first_free(["10.0.0.5"]))
    store.assign(B, netns="", host_veth="v-b", pod="", choose=first_free(["10.0.0.6"]))
    with pytest.raises(DuplicateAssignment):
        store.rebind(A, B, netns="", host_veth="v-x", pod="")
    with pytest.raises(DuplicateAssignment):
        store.rebind(A, AttachmentKey("c3", "eth0"), netns="", host_veth="v-b", pod="")
    assert store.get(A) is not None and store.get(A).address == "10.0.0.5"

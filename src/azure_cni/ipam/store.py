"""The node-local address store: which pod attachment holds which pool address.

sqlite in WAL mode with ``synchronous=FULL``: a commit is on disk before the agent answers
the runtime, so a crash (``kill -9``) never forgets an address it handed out. Rows are keyed
by (container id, ifname) and an address appears at most once (a UNIQUE index, so the
database itself refuses a duplicate). A released address remembers when it was released, so
it is not handed out again during the cooldown, also across restarts, and the least recently
used free address is picked first.

Cooldowns run on ``CLOCK_BOOTTIME`` (see ``Clock``), not on the wall clock: an NTP step back
by an hour would otherwise keep every freed address cooling for an hour (the pool looks
exhausted), and a step forward would end cooldowns early. That clock restarts at zero when
the machine boots, so each release also records the boot it happened in and the wall-clock
time; a store opened in another boot carries its cooldowns over on the wall clock, clamped
so that none lasts longer than it was set to (``AddressStore._rebase``).

An ``AddressStore`` is not thread-safe: the agent uses it from one thread only.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from azure_cni.api.attachment import AttachmentKey

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assignments (
    container_id TEXT NOT NULL,
    ifname       TEXT NOT NULL,
    address      TEXT NOT NULL,
    netns        TEXT NOT NULL,
    host_veth    TEXT NOT NULL,
    pod          TEXT NOT NULL,
    assigned_at  REAL NOT NULL,
    network      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (container_id, ifname)
);
CREATE UNIQUE INDEX IF NOT EXISTS assignments_address ON assignments (address);
CREATE UNIQUE INDEX IF NOT EXISTS assignments_veth ON assignments (host_veth);
CREATE TABLE IF NOT EXISTS pod_requests (
    address       TEXT PRIMARY KEY,
    pod           TEXT NOT NULL,
    public_ip     TEXT NOT NULL,
    backend_pools TEXT NOT NULL,
    withdrawn     INTEGER NOT NULL DEFAULT 0,
    pod_uid       TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS releases (
    address      TEXT PRIMARY KEY,
    released_at  REAL NOT NULL,
    cool_until   REAL NOT NULL,
    boot_id      TEXT NOT NULL DEFAULT '',
    released_wall REAL NOT NULL DEFAULT 0
);
"""

#: schema 1 kept released_at and cool_until on the wall clock and had no boot id
_FROM_SCHEMA_1 = """
ALTER TABLE releases ADD COLUMN boot_id TEXT NOT NULL DEFAULT '';
ALTER TABLE releases ADD COLUMN released_wall REAL NOT NULL DEFAULT 0;
UPDATE releases SET released_wall = released_at;
"""
#: columns added by later schemas to tables an older agent created: (table, column, type);
#: rows from before keep the default
_ADDED_COLUMNS = (
    # schema 3: the CNI network whose ADD made an attachment (GC is scoped to one network),
    # and the UID of the pod that asked for a public IP or pools
    ("assignments", "network", "TEXT NOT NULL DEFAULT ''"),
    ("pod_requests", "pod_uid", "TEXT NOT NULL DEFAULT ''"),
)
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    """This boot's id (the kernel's; the same inside containers), or "" if unknown."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Clock:
    """The store's clocks. ``since_boot`` measures cooldowns: CLOCK_BOOTTIME is monotonic
    (wall-clock steps do not move it), counts suspended time, and is the same for every
    process of one boot, so a restarted agent continues a cooldown where it stood. ``wall``
    dates assignments (other processes compare with it) and bridges a reboot."""

    since_boot: Callable[[], float] = field(
        default=partial(time.clock_gettime, time.CLOCK_BOOTTIME))
    wall: Callable[[], float] = time.time
    boot_id: Callable[[], str] = read_boot_id


class StoreError(RuntimeError):
    """The store file is unusable (corrupt, or written by an unknown version)."""


class DuplicateAssignment(StoreError):
    """An address or host veth is already recorded for another attachment."""


@dataclass(frozen=True)
class Assignment:
    """One pool address held by one pod attachment."""

    key: AttachmentKey
    address: str
    netns: str
    host_veth: str
    #: "namespace/name" from CNI_ARGS when the runtime gave it (for people reading status)
    pod: str
    assigned_at: float
    #: the CNI network (the configuration's ``name``) whose ADD made it; "" for attachments
    #: made by another front-end (Docker's) and for those recorded before schema 3
    network: str = ""


#: Given the addresses in use and those released with the time of release, pick one (or None).
Chooser = Callable[[frozenset[str], Mapping[str, "Release"]], str | None]


@dataclass(frozen=True)
class Release:
    """When an address was released and until when it cools down, on ``Clock.since_boot``."""

    released_at: float
    cool_until: float


class AddressStore:
    """Assignments and releases in one sqlite file."""

    def __init__(self, path: Path, clock: Clock | None = None) -> None:
        self.path = path
        self.clock = clock or Clock()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        db = self._db
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            check = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path} is not a readable sqlite database: {e}") from e
        if check != "ok":
            raise StoreError(f"{self.path} failed sqlite's integrity check: {check}")
        if not 0 <= version <= SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this agent knows "
                             f"{SCHEMA_VERSION}. Refusing to guess which addresses are in use.")
        self._use_wal()
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("BEGIN IMMEDIATE")
        try:
            # statement by statement: executescript() would commit this transaction
            script = _SCHEMA + (_FROM_SCHEMA_1 if version == 1 else "")
            for statement in filter(str.strip, script.split(";")):
                db.execute(statement)
            for table, column, declaration in _ADDED_COLUMNS:
                if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._rebase()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _use_wal(self, timeout: float = 30.0) -> None:
        """Switch the database to write-ahead logging. sqlite answers "database is locked" at
        once, without its busy timeout, when another connection opens the file at the same
        moment (e.g. ``azure-cni status`` beside the agent); try again until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _rebase(self) -> None:
        """Carry cooldowns released in another boot (or by schema 1) over to this boot's clock.

        The time since the release is taken from the wall clock; if that went backwards it
        counts as none, so a cooldown restarts in full but never lasts longer than it was set.
        """
        boot_id = self.clock.boot_id()
        now, wall = self.clock.since_boot(), self.clock.wall()
        rows = self._db.execute(
            "SELECT address, released_at, cool_until, released_wall FROM releases "
            "WHERE boot_id != ? OR ? = ''", (boot_id, boot_id)).fetchall()
        for address, released_at, cool_until, released_wall in rows:
            length = max(0.0, float(cool_until) - float(released_at))
            elapsed = max(0.0, wall - float(released_wall))
            left = max(0.0, length - elapsed)
            self._db.execute(
                "UPDATE releases SET released_at = ?, cool_until = ?, boot_id = ? "
                "WHERE address = ?", (now - elapsed, now + left, boot_id, address))

    def close(self) -> None:
        self._db.close()

    # -- reads -------------------------------------------------------------------------

    def get(self, key: AttachmentKey) -> Assignment | None:
        row = self._db.execute(
            "SELECT container_id, ifname, address, netns, host_veth, pod, assigned_at, network "
            "FROM assignments WHERE container_id = ? AND ifname = ?",
            (key.container_id, key.ifname)).fetchone()
        return _assignment(row) if row else None

    def assignments(self) -> list[Assignment]:
        rows = self._db.execute(
            "SELECT container_id, ifname, address, netns, host_veth, pod, assigned_at, network "
            "FROM assignments ORDER BY assigned_at, container_id, ifname").fetchall()
        return [_assignment(r) for r in rows]

    def releases(self) -> dict[str, Release]:
        rows = self._db.execute("SELECT address, released_at, cool_until FROM releases")
        return {a: Release(float(r), float(c)) for a, r, c in rows}

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM assignments").fetchone()[0])

    # -- writes ------------------------------------------------------------------------

    def assign(self, key: AttachmentKey, *, netns: str, host_veth: str, pod: str,
               choose: Chooser, now: float | None = None, network: str = ""
               ) -> Assignment | None:
        """Record a new assignment for ``key`` with the address ``choose`` picks.

        Reading what is taken, choosing, and inserting happen in one immediate transaction, so
        two callers (even two processes) can never pick the same address. Returns None when
        ``choose`` finds nothing; raises DuplicateAssignment if ``key`` already holds one.
        ``now`` (default: the wall clock) dates the assignment; ``network`` is the CNI
        network it belongs to.
        """
        now = self.clock.wall() if now is None else now
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            # an address whose pod asked for a public IP or backend pools is not handed out
            # again until the operator has taken them off its ipConfiguration
            taken = frozenset(a for (a,) in db.execute(
                "SELECT address FROM assignments UNION "
                "SELECT address FROM pod_requests WHERE withdrawn = 1"))
            released = {a: Release(float(r), float(c)) for a, r, c in
                        db.execute("SELECT address, released_at, cool_until FROM releases")}
            address = choose(taken, released)
            if address is None:
                db.execute("ROLLBACK")
                return None
            if address in taken:
                raise DuplicateAssignment(f"chooser picked {address}, which is in use")
            db.execute("INSERT INTO assignments (container_id, ifname, address, netns, "
                       "host_veth, pod, assigned_at, network) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (key.container_id, key.ifname, address, netns, host_veth, pod, now,
                        network))
            db.execute("COMMIT")
        except sqlite3.IntegrityError as e:
            db.execute("ROLLBACK")
            raise DuplicateAssignment(f"{key} cannot be recorded: {e}") from e
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return Assignment(key, address, netns, host_veth, pod, now, network)

    def release(self, key: AttachmentKey, cooldown_seconds: float) -> Assignment | None:
        """Forget ``key``'s assignment; its address cools down. Returns what was removed."""
        now, wall, boot_id = self.clock.since_boot(), self.clock.wall(), self.clock.boot_id()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT container_id, ifname, address, netns, host_veth, pod, assigned_at, "
                "network FROM assignments WHERE container_id = ? AND ifname = ?",
                (key.container_id, key.ifname)).fetchone()
            if row is None:
                db.execute("ROLLBACK")
                return None
            db.execute("DELETE FROM assignments WHERE container_id = ? AND ifname = ?",
                       (key.container_id, key.ifname))
            db.execute("UPDATE pod_requests SET withdrawn = 1 WHERE address = ?", (row[2],))
            if cooldown_seconds > 0:
                db.execute("INSERT OR REPLACE INTO releases VALUES (?, ?, ?, ?, ?)",
                           (row[2], now, now + cooldown_seconds, boot_id, wall))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return _assignment(row)

    def rebind(self, key: AttachmentKey, new_key: AttachmentKey, *, netns: str,
               host_veth: str, pod: str) -> Assignment | None:
        """Hand ``key``'s address to ``new_key`` (which may be ``key``) with new details, in one
        transaction: the address is never free in between. None if ``key`` holds nothing;
        DuplicateAssignment if ``new_key`` or ``host_veth`` is another attachment's."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT container_id, ifname, address, netns, host_veth, pod, assigned_at, "
                "network FROM assignments WHERE container_id = ? AND ifname = ?",
                (key.container_id, key.ifname)).fetchone()
            if row is None:
                db.execute("ROLLBACK")
                return None
            db.execute("UPDATE assignments SET container_id = ?, ifname = ?, netns = ?, "
                       "host_veth = ?, pod = ? WHERE container_id = ? AND ifname = ?",
                       (new_key.container_id, new_key.ifname, netns, host_veth, pod,
                        key.container_id, key.ifname))
            db.execute("COMMIT")
        except sqlite3.IntegrityError as e:
            db.execute("ROLLBACK")
            raise DuplicateAssignment(f"{key} cannot become {new_key}: {e}") from e
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return Assignment(new_key, row[2], netns, host_veth, pod, float(row[6]), row[7])

    def forget_releases(self, addresses: Iterable[str]) -> None:
        """Drop release history of addresses that left the pool (keeps the table small)."""
        self._db.executemany("DELETE FROM releases WHERE address = ?",
                             [(a,) for a in addresses])


    # -- per-pod Azure networking (api/podnet.py) ----------------------------------------

    def record_pod_request(self, address: str, pod: str, public_ip: str,
                           backend_pools: Iterable[str], pod_uid: str = "") -> None:
        """What the pod holding ``address`` asked for (replaces an earlier request)."""
        self._db.execute(
            "INSERT OR REPLACE INTO pod_requests (address, pod, public_ip, backend_pools, "
            "withdrawn, pod_uid) VALUES (?, ?, ?, ?, 0, ?)",
            (address, pod, public_ip, ",".join(backend_pools), pod_uid))

    def pod_requests(self) -> list[StoredPodRequest]:
        rows = self._db.execute("SELECT address, pod, public_ip, backend_pools, withdrawn, "
                                "pod_uid FROM pod_requests ORDER BY address")
        return [StoredPodRequest(a, p, ip, tuple(x for x in pools.split(",") if x), bool(w),
                                 uid) for a, p, ip, pools, w, uid in rows]

    def forget_pod_requests(self, addresses: Iterable[str]) -> None:
        """Forget withdrawn requests (the operator reported their ipConfigurations Detached)."""
        self._db.executemany("DELETE FROM pod_requests WHERE address = ? AND withdrawn = 1",
                             [(a,) for a in addresses])


@dataclass(frozen=True)
class StoredPodRequest:
    """A pod's public IP / backend pool request, by the address it holds (or held)."""

    address: str
    pod: str
    public_ip: str
    backend_pools: tuple[str, ...]
    #: the pod is gone; the address stays out of use until the operator says Detached
    withdrawn: bool
    #: the pod's UID, when the runtime gave it ("" for requests recorded before schema 3)
    pod_uid: str = ""


def _assignment(row: tuple[str, str, str, str, str, str, float, str]) -> Assignment:
    return Assignment(AttachmentKey(row[0], row[1]), row[2], row[3], row[4], row[5],
                      float(row[6]), row[7])

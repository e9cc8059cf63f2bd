"""The node-local address store: which pod attachment holds which pool address.

sqlite in WAL mode with ``synchronous=FULL``: a commit is on disk before the agent answers
the runtime, so a crash (``kill -9``) never forgets an address it handed out. Rows are keyed
by (container id, ifname) and an address appears at most once (a UNIQUE index, so the
database itself refuses a duplicate). A released address remembers when it was released, so
it is not handed out again during the cooldown, also across restarts, and the least recently
used free address is picked first.

An ``AddressStore`` is not thread-safe: the agent uses it from one thread only.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assignments (
    container_id TEXT NOT NULL,
    ifname       TEXT NOT NULL,
    address      TEXT NOT NULL,
    netns        TEXT NOT NULL,
    host_veth    TEXT NOT NULL,
    pod          TEXT NOT NULL,
    assigned_at  REAL NOT NULL,
    PRIMARY KEY (container_id, ifname)
);
CREATE UNIQUE INDEX IF NOT EXISTS assignments_address ON assignments (address);
CREATE UNIQUE INDEX IF NOT EXISTS assignments_veth ON assignments (host_veth);
CREATE TABLE IF NOT EXISTS releases (
    address      TEXT PRIMARY KEY,
    released_at  REAL NOT NULL,
    cool_until   REAL NOT NULL
);
"""


class StoreError(RuntimeError):
    """The store file is unusable (corrupt, or written by an unknown version)."""


class DuplicateAssignment(StoreError):
    """An address or host veth is already recorded for another attachment."""


#: ifnames of the attachments Docker's network plugin records (":" is not allowed in a
#: Linux interface name, so no CNI request has them): an address only Docker's IPAM holds,
#: and one a Docker endpoint uses
DOCKER_IPAM = "docker:ipam"
DOCKER_ENDPOINT = "docker:endpoint"


@dataclass(frozen=True)
class AttachmentKey:
    """What the CNI spec identifies an attachment by."""

    container_id: str
    ifname: str

    def __str__(self) -> str:
        return f"{self.container_id}/{self.ifname}"

    @property
    def from_docker(self) -> bool:
        """Recorded by the Docker plugin, not by a CNI ADD (CNI verbs leave it alone)."""
        return self.ifname in (DOCKER_IPAM, DOCKER_ENDPOINT)


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


#: Given the addresses in use and those released with the time of release, pick one (or None).
Chooser = Callable[[frozenset[str], Mapping[str, "Release"]], str | None]


@dataclass(frozen=True)
class Release:
    released_at: float
    cool_until: float


class AddressStore:
    """Assignments and releases in one sqlite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
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
        if version not in (0, SCHEMA_VERSION):
            raise StoreError(f"{self.path} has schema version {version}; this agent knows "
                             f"{SCHEMA_VERSION}. Refusing to guess which addresses are in use.")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    # -- reads -------------------------------------------------------------------------

    def get(self, key: AttachmentKey) -> Assignment | None:
        row = self._db.execute(
            "SELECT container_id, ifname, address, netns, host_veth, pod, assigned_at "
            "FROM assignments WHERE container_id = ? AND ifname = ?",
            (key.container_id, key.ifname)).fetchone()
        return _assignment(row) if row else None

    def assignments(self) -> list[Assignment]:
        rows = self._db.execute(
            "SELECT container_id, ifname, address, netns, host_veth, pod, assigned_at "
            "FROM assignments ORDER BY assigned_at, container_id, ifname").fetchall()
        return [_assignment(r) for r in rows]

    def releases(self) -> dict[str, Release]:
        rows = self._db.execute("SELECT address, released_at, cool_until FROM releases")
        return {a: Release(float(r), float(c)) for a, r, c in rows}

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM assignments").fetchone()[0])

    # -- writes ------------------------------------------------------------------------

    def assign(self, key: AttachmentKey, *, netns: str, host_veth: str, pod: str,
               choose: Chooser, now: float | None = None) -> Assignment | None:
        """Record a new assignment for ``key`` with the address ``choose`` picks.

        Reading what is taken, choosing, and inserting happen in one immediate transaction, so
        two callers (even two processes) can never pick the same address. Returns None when
        ``choose`` finds nothing; raises DuplicateAssignment if ``key`` already holds one.
        """
        now = time.time() if now is None else now
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            taken = frozenset(a for (a,) in db.execute("SELECT address FROM assignments"))
            released = {a: Release(float(r), float(c)) for a, r, c in
                        db.execute("SELECT address, released_at, cool_until FROM releases")}
            address = choose(taken, released)
            if address is None:
                db.execute("ROLLBACK")
                return None
            if address in taken:
                raise DuplicateAssignment(f"chooser picked {address}, which is in use")
            db.execute("INSERT INTO assignments VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (key.container_id, key.ifname, address, netns, host_veth, pod, now))
            db.execute("COMMIT")
        except sqlite3.IntegrityError as e:
            db.execute("ROLLBACK")
            raise DuplicateAssignment(f"{key} cannot be recorded: {e}") from e
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return Assignment(key, address, netns, host_veth, pod, now)

    def release(self, key: AttachmentKey, cooldown_seconds: float,
                now: float | None = None) -> Assignment | None:
        """Forget ``key``'s assignment; its address cools down. Returns what was removed."""
        now = time.time() if now is None else now
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT container_id, ifname, address, netns, host_veth, pod, assigned_at "
                "FROM assignments WHERE container_id = ? AND ifname = ?",
                (key.container_id, key.ifname)).fetchone()
            if row is None:
                db.execute("ROLLBACK")
                return None
            db.execute("DELETE FROM assignments WHERE container_id = ? AND ifname = ?",
                       (key.container_id, key.ifname))
            if cooldown_seconds > 0:
                db.execute("INSERT OR REPLACE INTO releases VALUES (?, ?, ?)",
                           (row[2], now, now + cooldown_seconds))
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
                "SELECT container_id, ifname, address, netns, host_veth, pod, assigned_at "
                "FROM assignments WHERE container_id = ? AND ifname = ?",
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
        return Assignment(new_key, row[2], netns, host_veth, pod, float(row[6]))

    def forget_releases(self, addresses: Iterable[str]) -> None:
        """Drop release history of addresses that left the pool (keeps the table small)."""
        self._db.executemany("DELETE FROM releases WHERE address = ?",
                             [(a,) for a in addresses])


def _assignment(row: tuple[str, str, str, str, str, str, float]) -> Assignment:
    return Assignment(AttachmentKey(row[0], row[1]), row[2], row[3], row[4], row[5],
                      float(row[6]))

"""Other parties changing a NIC behind its client's back, for fault injection.

- A second writer: right after ARM answers a read of a matching NIC, someone else commits a
  change to it (a tag, as an admin or a policy would), so the reader's ``If-Match`` write that
  follows gets 412 PreconditionFailed: the race every read-modify-write client must survive.
- An ipConfiguration left in provisioningState ``Failed`` (the NIC too), as a failed platform
  operation leaves it. Only a new PUT of the NIC clears it (arm-api.md: a NIC in ``Failed`` is
  repaired by writing it again).

Both act on ``ArmState`` under the emulator's lock.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from azure_cni_sim.armstate import ArmState, new_etag

#: the tag the second writer changes on every write it makes
SECOND_WRITER_TAG = "azure-cni-sim-second-writer"


@dataclass
class _Race:
    pattern: str
    remaining: int


class Interference:
    """Planned second writes; the caller holds the emulator's lock."""

    def __init__(self) -> None:
        self._races: list[_Race] = []
        self.second_writes = 0

    def race_reads(self, path: str, count: int) -> None:
        self._races.append(_Race(path.lower(), count))

    def clear(self) -> None:
        self._races.clear()

    def after_read(self, method: str, path: str, state: ArmState) -> None:
        """Commit a second writer's change to the NIC just read, if one is planned."""
        if method != "GET":
            return
        for race in self._races:
            if not fnmatch.fnmatchcase(path.lower(), race.pattern):
                continue
            nic = state.nics.get(path.lower())
            if nic is None or nic.operation is not None:
                return
            race.remaining -= 1
            if race.remaining <= 0:
                self._races.remove(race)
            self.second_writes += 1
            nic.tags = {**nic.tags, SECOND_WRITER_TAG: str(self.second_writes)}
            nic.etag = new_etag()
            return


def fail_ipconfig(state: ArmState, nic_id: str, name: str) -> None:
    """Leave ``name`` on ``nic_id`` (and the NIC) in provisioningState ``Failed``."""
    nic = state.nics.get(nic_id.lower())
    if nic is None:
        raise KeyError(nic_id)
    config = next((c for c in nic.ip_configs if c.name.lower() == name.lower()), None)
    if config is None:
        raise KeyError(f"{nic_id}/ipConfigurations/{name}")
    config.state = "Failed"
    nic.state = "Failed"
    nic.etag = new_etag()

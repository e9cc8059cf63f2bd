"""Replaying DELs the shim spooled while the agent was down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from azure_cni.agent.spool import replay_spool
from azure_cni.api.attachment import AttachmentKey
from azure_cni.cni.request import CniRequest
from azure_cni.ipam.store import Assignment


def spooled(directory: Path, container: str, sent_at: float, command: str = "DEL") -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / f"{container}_eth0.json"
    path.write_text(json.dumps({
        "protocol": 1, "command": command, "containerID": container, "netns": "",
        "ifname": "eth0", "sentAt": sent_at,
        "config": {"cniVersion": "1.0.0", "name": "azure-cni"}}))
    return path


async def test_replay_applies_deletes_and_skips_stale_ones(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spooled(spool, "gone", 100.0)
    spooled(spool, "readded", 100.0)
    current = {"readded": Assignment(AttachmentKey("readded", "eth0"), "198.18.0.1", "n",
                                     "azv1", "", assigned_at=200.0)}
    deleted: list[str] = []

    async def lookup(key: AttachmentKey) -> Assignment | None:
        return current.get(key.container_id)

    async def delete(request: CniRequest) -> Any:
        deleted.append(request.container_id)

    assert await replay_spool(spool, lookup, delete) == 1
    assert deleted == ["gone"], "a DEL older than the current assignment must not undo it"
    assert list(spool.iterdir()) == []


async def test_failures_stay_for_the_next_scan_and_junk_is_moved_aside(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spooled(spool, "c1", 1.0)
    (spool / "junk_eth0.json").write_text("{not json")
    spooled(spool, "c2", 1.0, command="ADD")

    async def lookup(key: AttachmentKey) -> None:
        return None

    async def failing(request: CniRequest) -> Any:
        raise OSError("netlink busy")

    assert await replay_spool(spool, lookup, failing) == 0
    assert sorted(p.name for p in spool.iterdir()) == ["c1_eth0.json", "c2_eth0.bad",
                                                        "junk_eth0.bad"]


async def test_no_spool_directory_is_nothing_to_do(tmp_path: Path) -> None:
    async def never(*_: Any) -> Any:
        raise AssertionError

    assert await replay_spool(tmp_path / "absent", never, never) == 0

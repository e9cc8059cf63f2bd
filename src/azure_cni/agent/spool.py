"""DEL requests the shim wrote to disk while the agent was unreachable, replayed.

The shim writes each one atomically (temp file + rename) as ``<container>_<ifname>.json``
containing the very request it would have sent. The agent replays the directory when it
starts (before it serves) and rescans it now and then, because a shim may fail to connect a
moment before the agent's socket appears and write its file just after the first scan.

A spooled DEL older than the attachment's current assignment is stale (the runtime ADDed the
same container again after the agent came back) and is dropped without effect.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from azure_cni.api.attachment import AttachmentKey
from azure_cni.cni.errors import CniError
from azure_cni.cni.request import CniRequest, parse_request
from azure_cni.ipam.store import Assignment

log = logging.getLogger(__name__)


async def replay_spool(
    spool_dir: Path,
    lookup: Callable[[AttachmentKey], Awaitable[Assignment | None]],
    delete: Callable[[CniRequest], Awaitable[object]],
) -> int:
    """Replay every spooled DEL in ``spool_dir``; return how many were applied."""
    if not spool_dir.is_dir():
        return 0
    applied = 0
    for path in sorted(spool_dir.glob("*.json")):
        try:
            request = parse_request(json.loads(path.read_bytes()))
        except (OSError, ValueError, CniError) as e:
            log.error("event=spool_unreadable path=%s error=%r; moving it aside", path, e)
            path.rename(path.with_suffix(".bad"))
            continue
        if request.command != "DEL":
            log.error("event=spool_not_del path=%s command=%s; moving it aside", path,
                      request.command)
            path.rename(path.with_suffix(".bad"))
            continue
        current = await lookup(request.key)
        if current is not None and current.assigned_at > request.sent_at:
            log.info("event=spool_stale container=%s ifname=%s; assigned again after the DEL",
                     request.container_id, request.ifname)
        else:
            try:
                await delete(request)
            except Exception as e:  # noqa: BLE001 - keep the file; the next scan retries it
                log.error("event=spool_replay_failed path=%s error=%r", path, e)
                continue
            applied += 1
            log.info("event=spool_replayed container=%s ifname=%s", request.container_id,
                     request.ifname)
        path.unlink()
    return applied

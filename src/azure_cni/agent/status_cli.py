"""``azure-cni status``: what the node's agent says about its pool, its pods and its health."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any, TextIO

from azure_cni.agent.status import AgentStatus


class AgentDown(RuntimeError):
    """The agent's socket cannot be reached; the message says what to check."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("azure-cni-agent", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def agent_get(socket_path: Path, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET ``path`` from the agent over its socket: (HTTP status, body)."""
    connection = _UnixConnection(socket_path, timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except FileNotFoundError:
        raise AgentDown(f"the azure-cni agent is not running on this node: no socket at "
                        f"{socket_path}") from None
    except OSError as e:
        raise AgentDown(f"the azure-cni agent does not answer on {socket_path}: "
                        f"{e.strerror or e}") from None
    finally:
        connection.close()


def fetch_status(socket_path: Path, timeout: float = 10.0) -> dict[str, Any]:
    """GET /v1/status from the agent."""
    status, body = agent_get(socket_path, "/v1/status", timeout)
    if status != 200:
        raise AgentDown(f"the agent answered HTTP {status}: {body[:200]!r}")
    return dict(json.loads(body))


def _age(since: float, now: float) -> str:
    seconds = max(0, int(now - since))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _render_pod_networking(status: AgentStatus, out: TextIO) -> None:
    """Public IPs and backend pools per pod: the request, and what the operator did."""
    if not status.pod_requests:
        return
    answers = {a.address: a for a in status.pod_networking}
    out.write(f"\n{len(status.pod_requests)} pod network request(s)\n")
    for r in status.pod_requests:
        answer = answers.get(r.address)
        asked = ", ".join(([f"public IP {r.public_ip}"] if r.public_ip else [])
                          + [f"pool {p}" for p in r.backend_pools])
        state = str(answer.state) if answer else "Pending"
        if r.withdrawn:
            asked = f"withdrawn ({asked})"
        detail = f": {answer.message}" if answer and answer.message else ""
        out.write(f"  {r.address}  {r.pod or '-'}  {asked}  -> {state}{detail}\n")


def render(status: AgentStatus, out: TextIO, now: float | None = None) -> None:
    """Print the status for a person."""
    now = time.time() if now is None else now
    pool = status.pool
    health = "ready" if status.ready else f"NOT READY ({status.reason})"
    out.write(f"node:    {status.node}\n")
    out.write(f"agent:   {health}: {status.message}\n")
    if status.pool_source:
        out.write(f"source:  {status.pool_source}\n")
    if status.pool_source_problem:
        out.write(f"trouble: {status.pool_source_problem}\n")
    if status.egress_problem:
        out.write(f"egress:  {status.egress_problem}\n")
    primary = (pool.nic.primary_ip if pool.nic else "") or "?"
    subnet = (pool.nic.subnet_cidr if pool.nic else "") or "?"
    out.write(f"nic:     primary {primary}, subnet {subnet}, mtu {status.mtu}\n")
    if not pool.known:
        out.write("pool:    not received yet\n")
    else:
        out.write(f"pool:    {pool.allocated} allocated, {pool.used} used, {pool.free} free, "
                  f"{pool.releasing} releasing, {pool.cooling} cooling down\n")
    if pool.release_acks:
        out.write(f"acked:   {', '.join(pool.release_acks)}\n")
    if pool.outside_pool:
        out.write(f"outside: {', '.join(pool.outside_pool)} (held by pods, no longer in the "
                  "pool: the NIC does not hold them, their traffic is not delivered)\n")
    out.write(f"\n{len(status.assignments)} pod attachment(s)\n")
    if status.assignments:
        rows = [("ADDRESS", "POD", "CONTAINER", "IFNAME", "VETH", "AGE")]
        for a in status.assignments:
            rows.append((a.address, a.pod or "-", a.container_id[:12], a.ifname,
                         a.host_veth, _age(a.assigned_at, now)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            out.write("\n")
    _render_pod_networking(status, out)
    cooling = {a: t for a, t in status.cooling_down.items() if t > now}
    if cooling:
        until = ", ".join(f"{a} ({int(t - now)}s)" for a, t in sorted(cooling.items()))
        out.write(f"\ncooling down: {until}\n")

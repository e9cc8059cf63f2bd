"""The conventions every azure-cni command shares, as an admin meets them on a terminal:
--version, help without developer notes, one --log-level that refuses a bad level, exit codes
listed in the help, -o json|yaml, and a bare ``azure-cni`` that prints its help."""

from __future__ import annotations

import json
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import yaml

from azure_cni import __version__
from azure_cni.agent.exitcodes import AgentExit
from azure_cni.cli import CliExit
from azure_cni.operator.usage import OperatorExit

BIN = Path(sys.executable).parent
COMMANDS = {"azure-cni": CliExit, "azure-cni-operator": OperatorExit,
            "azure-cni-agent": AgentExit}
SUBCOMMANDS = (("status",), ("install", "standalone"), ("uninstall", "standalone"))


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_version(command: str) -> None:
    done = run(command, "--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"{command} {__version__}")


@pytest.mark.parametrize("command", [*([c] for c in COMMANDS),
                                     *(["azure-cni", *s] for s in SUBCOMMANDS)])
def test_help_is_for_admins(command: list[str]) -> None:
    done = run(*command, "--help")
    assert done.returncode == 0
    assert "``" not in done.stdout, "reST markup in the help"
    assert "`" not in done.stdout
    assert "lazily" not in done.stdout and "import" not in done.stdout, "a developer note"
    assert "--log-level" in done.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_exit_codes_are_listed_in_the_help_from_the_enum(command: str) -> None:
    text = run(command, "--help").stdout
    listed = text.split("exit codes:\n", 1)[1]
    for code in COMMANDS[command]:
        assert f"  {int(code):<4}{code.description.split()[0]}" in listed


@pytest.mark.parametrize("argv", [["azure-cni-operator"], ["azure-cni-agent"], ["azure-cni"],
                                  ["azure-cni", "status"],
                                  ["azure-cni", "uninstall", "standalone"]])
def test_a_bad_log_level_is_refused(argv: list[str]) -> None:
    done = run(*argv, "--log-level", "verbose")
    assert done.returncode == 2
    assert "'verbose' is not a log level: use one of debug, info, warning, error" in done.stderr


def test_bare_azure_cni_prints_its_help() -> None:
    done = run("azure-cni")
    assert done.returncode == CliExit.OK
    assert done.stdout.startswith("usage: azure-cni")
    for command in ("status", "install", "uninstall"):
        assert f"    {command}" in done.stdout


def test_an_unknown_command_is_a_usage_error() -> None:
    done = run("azure-cni", "stauts")
    assert done.returncode == CliExit.USAGE
    assert "invalid choice: 'stauts'" in done.stderr


class _Agent(socketserver.ThreadingUnixStreamServer):
    document: dict[str, Any]


class _Handler(BaseHTTPRequestHandler):
    server: _Agent

    def do_GET(self) -> None:
        body = json.dumps(self.server.document).encode()
        self.send_response(200 if self.path == "/v1/status" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:  # a unix socket has no client address
        return "agent"

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[_Agent]:
    """A stand-in for the agent's status endpoint on a unix socket."""
    server = _Agent(str(tmp_path / "agent.sock"), _Handler)
    server.document = {"node": "vm7", "ready": True, "reason": "Serving", "message": "serving",
                       "egressProblem": "", "mtu": 1500, "assignments": [], "coolingDown": {},
                       "pool": {"known": True, "allocated": 8, "used": 0, "free": 8,
                                "releasing": 0, "coolingDown": 0, "releaseAcks": [],
                                "outsidePool": [], "nic": {}}}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_status_prints_the_document_as_asked(agent: _Agent, tmp_path: Path,
                                             output: str) -> None:
    done = run("azure-cni", "status", "--socket", str(tmp_path / "agent.sock"), "-o", output)
    assert done.returncode == CliExit.OK, done.stderr
    parsed = json.loads(done.stdout) if output == "json" else yaml.safe_load(done.stdout)
    assert parsed == agent.document


def test_status_of_an_agent_that_is_not_ready(agent: _Agent, tmp_path: Path) -> None:
    agent.document = {**agent.document, "ready": False, "reason": "NoPool",
                      "message": "NodeIPPool vm7 does not exist"}
    done = run("azure-cni", "--log-level", "info", "status", "--socket",
               str(tmp_path / "agent.sock"))
    assert done.returncode == CliExit.NOT_READY
    assert "NOT READY (NoPool)" in done.stdout


def test_status_without_an_agent(tmp_path: Path) -> None:
    done = run("azure-cni", "status", "--socket", str(tmp_path / "none.sock"), "-o", "yaml")
    assert done.returncode == CliExit.FAILED
    assert "the azure-cni agent is not running on this node" in done.stderr


def test_uninstall_node_removes_the_agents_files_under_a_host_root(tmp_path: Path) -> None:
    host = tmp_path / "host"
    for path in ("etc/cni/net.d/10-azure.conflist", "etc/cni/net.d/05-mine.conflist",
                 "opt/cni/bin/azure-vnet", "opt/cni/bin/portmap",
                 "opt/cni/bin/azure-vnet.d/azure_vnet_shim.py", "var/lib/azure-cni/ipam.db"):
        (host / path).parent.mkdir(parents=True, exist_ok=True)
        (host / path).write_text("")
    done = run("azure-cni", "uninstall", "node", "--host-root", str(host), "--keep-rules")
    assert done.returncode == CliExit.OK, done.stderr
    assert f"removed:      {host}/etc/cni/net.d/10-azure.conflist" in done.stdout
    left = sorted(str(p.relative_to(host)) for p in host.rglob("*") if p.is_file())
    assert left == ["etc/cni/net.d/05-mine.conflist", "opt/cni/bin/portmap"]


def test_preflight_of_a_node_says_what_to_do_and_fails(tmp_path: Path) -> None:
    (tmp_path / "opt/cni/bin").mkdir(parents=True)
    (tmp_path / "etc/cni/net.d").mkdir(parents=True)
    done = run("azure-cni", "preflight", "node", "--host-root", str(tmp_path), "--node", "vm3",
               "-o", "json")
    assert done.returncode == CliExit.CHECKS_FAILED
    report = json.loads(done.stdout)
    failed = {f["check"] for f in report["findings"] if f["result"] == "fail"}
    assert failed == {"HostPython", "Portmap"}
    assert all(f["fix"] for f in report["findings"] if f["result"] == "fail")

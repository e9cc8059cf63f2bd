"""The installed azure-vnet plugin, executed as a runtime executes it (env + stdin).

No agent here, or a stand-in on a unix socket: these tests need neither root nor a cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from azure_cni.agent import install
from azure_cni.api.settings import AgentSettings
from azure_cni.cni import request, shim
from azure_cni.cni.errors import Code


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bin_dir = tmp_path_factory.mktemp("bin")
    return install.install_shim(AgentSettings(cni_bin_dir=str(bin_dir)))


def run(plugin: Path, env: dict[str, str], stdin: bytes = b"") -> tuple[int, Any, str]:
    done = subprocess.run([str(plugin)], input=stdin, env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, timeout=30, check=False)
    out = done.stdout.decode()
    return done.returncode, (json.loads(out) if out.strip() else None), done.stderr.decode()


def config(tmp_path: Path, **extra: Any) -> bytes:
    doc = {"cniVersion": "1.0.0", "name": "azure-cni", "type": "azure-vnet",
           "agentSocket": str(tmp_path / "nobody.sock"), "spoolDir": str(tmp_path / "spool"),
           "timeoutSeconds": 5}
    doc.update(extra)
    return json.dumps(doc).encode()


ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/c1",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


def test_codes_and_versions_agree_with_the_agent() -> None:
    assert shim.PROTOCOL == request.PROTOCOL
    assert shim.SUPPORTED_VERSIONS == request.SUPPORTED_VERSIONS
    for name in ("INCOMPATIBLE_VERSION", "INVALID_ENVIRONMENT", "IO_FAILURE",
                 "DECODING_FAILURE", "INVALID_CONFIG", "TRY_AGAIN_LATER", "NOT_AVAILABLE",
                 "INTERNAL"):
        assert getattr(shim, name) == Code[name], name


def test_version_answers_without_stdin_or_agent(plugin: Path) -> None:
    rc, out, err = run(plugin, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.1.0"}')
    assert rc == 0, err
    assert out == {"cniVersion": "1.1.0",
                   "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


BAD_INPUT = [
    # (environment, stdin, code, words in msg+details)
    ({}, b"{}", 4, "CNI_COMMAND"),
    ({"CNI_COMMAND": "UPDATE"}, b"{}", 4, "CNI_COMMAND"),
    ({**ADD_ENV, "CNI_CONTAINERID": ""}, None, 4, "CNI_CONTAINERID"),
    ({**ADD_ENV, "CNI_NETNS": ""}, None, 4, "CNI_NETNS"),
    ({**ADD_ENV, "CNI_IFNAME": "way-too-long-name"}, None, 4, "CNI_IFNAME"),
    ({**ADD_ENV, "CNI_NETNS": "", "CNI_CONTAINERID": ""}, None, 4,
     "CNI_CONTAINERID"),
    (ADD_ENV, b'{"cniVersion": "1.0.0", "name": ', 6, "not valid JSON"),
    (ADD_ENV, b"\xff\xfe", 6, "UTF-8"),
    (ADD_ENV, b"[1, 2]", 7, "JSON object"),
    (ADD_ENV, b'{"name": "x"}', 7, "cniVersion"),
    (ADD_ENV, b'{"cniVersion": "9.9.9", "name": "x"}', 1, "9.9.9"),
    (ADD_ENV, b'{"cniVersion": "1.0.0"}', 7, "name"),
    (ADD_ENV, b'{"cniVersion": "1.0.0", "name": "x", "timeoutSeconds": -1}', 7,
     "timeoutSeconds"),
    (ADD_ENV, b'{"cniVersion": "1.0.0", "name": "x", "agentSocket": 5}', 7, "agentSocket"),
    ({**ADD_ENV, "CNI_COMMAND": "CHECK"}, b'{"cniVersion": "0.3.1", "name": "x"}', 1, "0.4.0"),
    ({"CNI_COMMAND": "GC"}, b'{"cniVersion": "1.0.0", "name": "x"}', 1, "1.1.0"),
    ({"CNI_COMMAND": "STATUS"}, b'{"cniVersion": "0.4.0", "name": "x"}', 1, "1.1.0"),
]


@pytest.mark.parametrize(("env", "stdin", "code", "words"), BAD_INPUT)
def test_bad_input_gives_the_spec_code(plugin: Path, tmp_path: Path, env: dict[str, str],
                                       stdin: bytes | None, code: int, words: str) -> None:
    rc, out, err = run(plugin, env, config(tmp_path) if stdin is None else stdin)
    assert rc == 1
    assert out["code"] == code, out
    assert words in out["msg"] + " " + out["details"]
    assert "Traceback" not in err
    assert set(out) == {"cniVersion", "code", "msg", "details"}


def test_errors_answer_in_the_config_version(plugin: Path, tmp_path: Path) -> None:
    rc, out, _ = run(plugin, ADD_ENV, config(tmp_path, cniVersion="0.4.0"))
    assert (rc, out["code"], out["cniVersion"]) == (1, 11, "0.4.0")


def test_agent_down_add_and_status_name_the_socket(plugin: Path, tmp_path: Path) -> None:
    rc, out, _ = run(plugin, ADD_ENV, config(tmp_path))
    assert (rc, out["code"]) == (1, 11)
    assert str(tmp_path / "nobody.sock") in out["details"]
    rc, out, _ = run(plugin, {"CNI_COMMAND": "STATUS"}, config(tmp_path, cniVersion="1.1.0"))
    assert (rc, out["code"]) == (1, 50)
    assert "not reachable" in out["msg"]


def test_status_tolerates_a_graceful_agent_restart_for_a_while(plugin: Path,
                                                              tmp_path: Path) -> None:
    """A DaemonSet roll stops the agent gracefully for a few seconds: STATUS (containerd 2.x
    polls it for node readiness) must not flap the node, but not lie for long either."""
    status = ({"CNI_COMMAND": "STATUS"}, config(tmp_path, cniVersion="1.1.0"))
    marker = tmp_path / "spool" / shim.AGENT_STOPPED
    marker.parent.mkdir()
    marker.write_text("")
    rc, out, err = run(plugin, *status)
    assert (rc, out) == (0, None), out
    assert "agent_restarting" in err
    long_ago = time.time() - shim.RESTART_GRACE_SECONDS - 5
    os.utime(marker, (long_ago, long_ago))
    rc, out, _ = run(plugin, *status)
    assert (rc, out["code"]) == (1, 50), "the agent has been away too long"
    marker.write_text("")
    rc, out, _ = run(plugin, ADD_ENV, config(tmp_path))
    assert (rc, out["code"]) == (1, 11), "ADD fails during the restart: kubelet retries"


def test_agent_down_del_is_spooled_and_succeeds(plugin: Path, tmp_path: Path) -> None:
    env = {**ADD_ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}
    rc, out, err = run(plugin, env, config(tmp_path))
    assert (rc, out) == (0, None), err
    (spooled,) = (tmp_path / "spool").iterdir()
    assert spooled.name == "c1_eth0.json"
    assert oct(spooled.stat().st_mode & 0o777) == "0o600"
    body = json.loads(spooled.read_text())
    parsed = request.parse_request(body)
    assert (parsed.command, parsed.container_id, parsed.ifname) == ("DEL", "c1", "eth0")
    assert "del_spooled" in err
    assert not [p for p in (tmp_path / "spool").iterdir() if p.name.startswith(".")]


def test_del_that_cannot_be_spooled_fails_with_try_again(plugin: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env = {**ADD_ENV, "CNI_COMMAND": "DEL"}
    rc, out, _ = run(plugin, env, config(tmp_path, spoolDir=str(blocker / "spool")))
    assert (rc, out["code"]) == (1, 11)
    assert "could not be spooled" in out["msg"]


class StandInAgent:
    """A unix socket server that answers every request with ``respond(body)``."""

    def __init__(self, path: Path, respond: Callable[[bytes], bytes | None]) -> None:
        self.path = path
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(16)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(json.loads(body))
                answer = self.respond(body)
                if answer is not None:
                    conn.sendall(answer)

    def close(self) -> None:
        self.server.close()


def http(status: int, body: bytes, headers: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{headers}\r\n").encode() \
        + body


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[Callable[..., StandInAgent]]:
    made: list[StandInAgent] = []

    def make(respond: Callable[[bytes], bytes | None]) -> StandInAgent:
        agent = StandInAgent(tmp_path / "agent.sock", respond)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()


def test_forwards_the_request_and_prints_the_result(plugin: Path, tmp_path: Path,
                                                    stand_in: Callable[..., StandInAgent]) -> None:
    result = b'{"cniVersion": "1.0.0", "ips": []}'
    agent = stand_in(lambda body: http(200, result))
    env = {**ADD_ENV, "CNI_ARGS": "K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop"}
    rc, out, err = run(plugin, env, config(tmp_path, agentSocket=str(agent.path), extra=[1]))
    assert rc == 0, err
    assert out == json.loads(result)
    (sent,) = agent.requests
    assert sent["command"] == "ADD" and sent["containerID"] == "c1"
    assert sent["args"] == "K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop"
    assert sent["config"]["extra"] == [1], "the configuration is passed through unchanged"
    assert request.parse_request(sent).pod == "shop/web"


def test_agent_errors_and_warnings_reach_the_runtime(plugin: Path, tmp_path: Path,
                                                     stand_in: Callable[..., StandInAgent]
                                                     ) -> None:
    error = b'{"code": 11, "msg": "pool exhausted", "details": "0 free"}'
    agent = stand_in(lambda body: http(400, error))
    rc, out, _ = run(plugin, ADD_ENV, config(tmp_path, agentSocket=str(agent.path)))
    assert (rc, out) == (1, {"cniVersion": "1.0.0", "code": 11, "msg": "pool exhausted",
                             "details": "0 free"})
    agent.respond = lambda body: http(200, b"", "X-Azure-CNI-Warning: left alone\r\n")
    rc, out, err = run(plugin, {**ADD_ENV, "CNI_COMMAND": "DEL"},
                       config(tmp_path, agentSocket=str(agent.path)))
    assert (rc, out) == (0, None)
    assert "left alone" in err


@pytest.mark.parametrize("answer", [b"garbage\r\n\r\n", http(500, b"<html>oops</html>"),
                                    http(200, b"{not json"), b"HTTP/1.1 200 OK\r\n\r\nabc"])
def test_unreadable_agent_answers_are_errors_not_tracebacks(
        plugin: Path, tmp_path: Path, stand_in: Callable[..., StandInAgent],
        answer: bytes) -> None:
    agent = stand_in(lambda body: answer)
    rc, out, err = run(plugin, ADD_ENV, config(tmp_path, agentSocket=str(agent.path)))
    assert (rc, out["code"]) == (1, 11)
    assert "Traceback" not in err


def test_deadline_then_del_is_spooled(plugin: Path, tmp_path: Path,
                                      stand_in: Callable[..., StandInAgent]) -> None:
    agent = stand_in(lambda body: (time.sleep(3), None)[1])
    started = time.monotonic()
    rc, out, _ = run(plugin, ADD_ENV, config(tmp_path, agentSocket=str(agent.path),
                                             timeoutSeconds=0.5))
    assert (rc, out["code"]) == (1, 11)
    assert "deadline" in out["details"]
    assert time.monotonic() - started < 3, "the shim must not wait past its deadline"
    rc, out, _ = run(plugin, {**ADD_ENV, "CNI_COMMAND": "DEL"},
                     config(tmp_path, agentSocket=str(agent.path), timeoutSeconds=0.5))
    assert (rc, out) == (0, None)
    assert [p.name for p in (tmp_path / "spool").iterdir()] == ["c1_eth0.json"]


def test_launcher_uses_the_host_python_and_caches_bytecode(plugin: Path) -> None:
    first_line = plugin.read_text().splitlines()[0]
    assert first_line == "#!/usr/bin/python3 -IS"
    cache = plugin.parent / install.SHIM_DIR_NAME / "__pycache__"
    assert any(p.name.startswith(install.SHIM_MODULE) for p in cache.iterdir())


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stdin=st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                 | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.sampled_from(["cniVersion", "name", "agentSocket",
                                                    "timeoutSeconds", "spoolDir", "x"]),
                                   inner, max_size=5),
                 max_leaves=12).map(lambda v: json.dumps(v).encode())),
       # not DEL: a valid config without spoolDir would spool to the host's default directory
       command=st.sampled_from(["ADD", "CHECK", "STATUS", "GC", "bogus"]))
def test_random_stdin_always_gets_valid_error_json(plugin: Path, tmp_path: Path, stdin: bytes,
                                                   command: str) -> None:
    env = {**ADD_ENV, "CNI_COMMAND": command}
    assert not Path(shim.DEFAULT_SOCKET).exists(), "a real agent runs here; the test would use it"
    done = subprocess.run([str(plugin)], input=stdin,
                          env={"PATH": "/usr/bin:/bin", **env, "HOME": str(tmp_path)},
                          capture_output=True, timeout=30, check=False, cwd=tmp_path)
    out = done.stdout.decode()
    assert "Traceback" not in done.stderr.decode()
    assert done.returncode == 1
    error = json.loads(out)
    assert set(error) == {"cniVersion", "code", "msg", "details"}
    assert isinstance(error["code"], int) and error["msg"]
    assert error["cniVersion"] in shim.SUPPORTED_VERSIONS

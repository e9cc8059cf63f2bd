#!/usr/bin/python3 -IS
"""azure-vnet: the CNI plugin a container runtime executes; it forwards to the node agent.

One file, standard library only: the agent copies it onto the host (``/opt/cni/bin``) with the
host's python3 in the shebang. It reads the CNI environment and the network configuration,
answers VERSION itself, validates what it can without the agent, sends one JSON request over
HTTP/1.1 on the agent's unix socket and prints the agent's answer (a result, or a CNI error
object) on stdout. Logs go to stderr only; there is never a traceback.

If the agent cannot be reached, ADD/CHECK/GC fail with code 11 and STATUS with code 50; a DEL
is written atomically to the spool directory and succeeds, and the agent replays it when it
starts. The exception is STATUS while the agent restarts: an agent that stops gracefully (a
DaemonSet roll) leaves ``agent-stopped`` in the spool directory, and for
``RESTART_GRACE_SECONDS`` after that STATUS succeeds, so containerd 2.x does not turn a roll
into a NotReady node. The whole exchange has a hard deadline (``timeoutSeconds``, default
15 s).

Start-up time is the plugin's latency, so this file imports only modules that are compiled
into the interpreter or cost well under a millisecond: the ``json`` and ``socket`` packages
pull in ``re`` and ``enum`` (~7 ms each on a small VM), so their C cores are used directly
(with the packages as a fallback on interpreters that lack them).
"""

from __future__ import annotations

import posix  # built in; "os" is not loaded by "python3 -S" and costs ~1.2 ms
import sys
import time

try:  # the C accelerator behind json; json.decoder costs ~7 ms of imports
    from _json import encode_basestring_ascii as _quote
    from _json import make_scanner as _make_scanner

    _C_JSON = True
except ImportError:  # pragma: no cover - CPython always has it
    _C_JSON = False

try:  # the C socket module; socket.py imports enum and selectors
    import _socket
except ImportError:  # pragma: no cover
    import socket as _socket  # type: ignore[no-redef]

#: What this shim speaks to the agent; the agent refuses other versions.
PROTOCOL = 1
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
DEFAULT_SOCKET = "/run/azure-cni/agent.sock"
DEFAULT_SPOOL_DIR = "/var/lib/azure-cni/spool"
DEFAULT_TIMEOUT = 15.0
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
#: written into the spool directory by an agent that stops gracefully, removed when it serves
AGENT_STOPPED = "agent-stopped"
#: how long after a graceful stop STATUS still reports the node's network as ready
RESTART_GRACE_SECONDS = 60.0

# CNI error codes (spec section 5)
INCOMPATIBLE_VERSION = 1
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
INTERNAL = 999

_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class CniError(Exception):
    """A failure to report to the runtime as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details
        #: the cniVersion to answer in, once the configuration has told us
        self.version = LATEST


class AgentUnreachable(Exception):
    """The agent's socket could not be used; the message says why."""


# -- JSON without the json package ---------------------------------------------------------


class _ScanContext:
    # the attributes _json.make_scanner reads from a JSONDecoder
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> object:
        raise ValueError(f"{name} is not valid JSON")


_WHITESPACE = " \t\n\r"


def parse_json(text: str) -> object:
    """Decode one JSON document; raise ValueError on anything else."""
    if not _C_JSON:  # pragma: no cover
        return _parse_json_slowly(text)
    scan = _make_scanner(_ScanContext())  # type: ignore[arg-type]  # a JSONDecoder look-alike
    start = 0
    while start < len(text) and text[start] in _WHITESPACE:
        start += 1
    try:
        value, end = scan(text, start)
    except (StopIteration, SystemError, ValueError):
        # The C scanner reports errors through json.decoder, which is not imported here
        # (it answers SystemError then): let the json package explain the error.
        return _parse_json_slowly(text)
    while end < len(text) and text[end] in _WHITESPACE:
        end += 1
    if end != len(text):
        raise ValueError(f"extra data after the JSON value at character {end}")
    return value


def _parse_json_slowly(text: str) -> object:
    import json  # noqa: PLC0415 - only malformed input (or a Python without _json) gets here

    return json.loads(text, parse_constant=_ScanContext.parse_constant)


def to_json(value: object) -> str:
    """Encode the few shapes the shim writes itself: dicts, lists, strings, numbers, bools."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if not _C_JSON:  # pragma: no cover
            import json  # noqa: PLC0415 - only interpreters without _json get here

            return json.dumps(value)
        return str(_quote(value))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{to_json(str(k))}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__}")


def error_object(code: int, msg: str, details: str = "", version: str = LATEST) -> str:
    return to_json({"cniVersion": version, "code": code, "msg": msg, "details": details})


def log(event: str, **fields: object) -> None:
    parts = " ".join(f"{k}={v}" for k, v in fields.items())
    sys.stderr.write(f"azure-vnet: event={event} {parts}\n")


# -- validation --------------------------------------------------------------------------


def _valid_container_id(value: str) -> bool:
    return bool(value) and value[0] not in "_.-" and all(c in _ID_CHARS for c in value)


def _valid_ifname(value: str) -> bool:
    if not value or len(value) > 15 or value in (".", ".."):
        return False
    return not any(c in "/:" or c.isspace() for c in value)


def environment() -> dict[str, str]:
    """The process environment as text, without importing os."""
    return {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in posix.environ.items()}


def read_environment(env: dict[str, str]) -> dict[str, str]:
    """The CNI_* variables this command needs; raise CniError(4) naming every bad one."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, "CNI_COMMAND is missing or unknown",
                       f"CNI_COMMAND={command!r}; expected one of {', '.join(COMMANDS)}")
    values = {"command": command,
              "containerID": env.get("CNI_CONTAINERID", ""),
              "netns": env.get("CNI_NETNS", ""),
              "ifname": env.get("CNI_IFNAME", ""),
              "args": env.get("CNI_ARGS", ""),
              "path": env.get("CNI_PATH", "")}
    if command in ("VERSION", "STATUS", "GC"):
        return values
    problems = []
    if not _valid_container_id(values["containerID"]):
        problems.append("CNI_CONTAINERID must be set to letters, digits, '_', '.' or '-' "
                        f"(got {values['containerID']!r})")
    if command != "DEL" and not values["netns"]:
        problems.append(f"CNI_NETNS must be set for {command}")
    if not _valid_ifname(values["ifname"]):
        problems.append("CNI_IFNAME must be 1-15 characters without '/', ':' or spaces "
                        f"(got {values['ifname']!r})")
    if problems:
        raise CniError(INVALID_ENVIRONMENT, "invalid CNI environment variables",
                       "; ".join(problems))
    return values


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def parse_config(command: str, raw: bytes) -> tuple[dict[str, object], str]:
    """The network configuration from stdin and its text; CniError 6, 7 or 1 if unusable."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CniError(DECODING_FAILURE, "network configuration is not UTF-8", str(e)) from None
    try:
        config = parse_json(text)
    except (ValueError, RecursionError) as e:
        raise CniError(DECODING_FAILURE, "network configuration is not valid JSON",
                       str(e)) from None
    if not isinstance(config, dict):
        raise CniError(INVALID_CONFIG, "network configuration must be a JSON object",
                       f"got {type(config).__name__}")
    version = config.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "network configuration has no cniVersion",
                       "set cniVersion to one of " + ", ".join(SUPPORTED_VERSIONS))
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {version!r}, plugin supports "
                       f"{', '.join(SUPPORTED_VERSIONS)}")
    minimum = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}.get(command)
    if minimum and _version_tuple(version) < _version_tuple(minimum):
        raise CniError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"{command} needs cniVersion {minimum} or later; config is {version}")
    try:
        _check_plugin_keys(config)
    except CniError as e:
        e.version = version
        raise
    return config, text


def _check_plugin_keys(config: dict[str, object]) -> None:
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(INVALID_CONFIG, "network configuration has no name",
                       "the conflist's \"name\" must be a non-empty string")
    for key in ("agentSocket", "spoolDir"):
        if key in config and (not isinstance(config[key], str) or not config[key]):
            raise CniError(INVALID_CONFIG, f"{key} must be a non-empty string",
                           f"{key}={config[key]!r}")
    timeout = config.get("timeoutSeconds", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise CniError(INVALID_CONFIG, "timeoutSeconds must be a positive number",
                       f"timeoutSeconds={timeout!r}")


# -- talking to the agent ----------------------------------------------------------------


def _connect(sock: _socket.socket, socket_path: str, deadline: float) -> None:
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            sock.connect(socket_path)
            return
        except BlockingIOError:
            # a unix socket's accept queue is full: the agent is busy, not gone
            if time.monotonic() >= deadline:
                raise AgentUnreachable(f"{socket_path} stayed busy until the deadline") from None
            time.sleep(0.005)
        except OSError as e:
            raise AgentUnreachable(f"cannot connect to {socket_path}: "
                                   f"{e.strerror or e}") from None


def _http_request(socket_path: str, body: bytes, deadline: float) -> tuple[int, bytes, str]:
    """POST body to the agent; return (status, response body, warning header)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        _connect(sock, socket_path, deadline)
        head = (f"POST /v1/cni HTTP/1.1\r\nHost: azure-cni-agent\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n").encode("ascii")
        chunks = []
        try:
            sock.sendall(head + body)
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            raise AgentUnreachable(f"no answer from {socket_path} within the deadline") from None
        except OSError as e:
            raise AgentUnreachable(f"connection to {socket_path} failed: "
                                   f"{e.strerror or e}") from None
    finally:
        sock.close()
    response = b"".join(chunks)
    head_bytes, sep, payload = response.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status_parts = lines[0].split(" ", 2)
    if not sep or len(status_parts) < 2 or not status_parts[1].isdigit():
        raise AgentUnreachable(f"{socket_path} answered something that is not HTTP")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is None or not length.isdigit() or int(length) != len(payload):
        raise AgentUnreachable(f"incomplete answer from {socket_path}")
    return int(status_parts[1]), payload, headers.get("x-azure-cni-warning", "")


def _spool_delete(spool_dir: str, request: bytes, values: dict[str, str]) -> str:
    """Write a DEL request atomically for the agent to replay; return the file's path."""
    import os  # noqa: PLC0415 - only this rare path needs it

    os.makedirs(spool_dir, mode=0o700, exist_ok=True)
    name = f"{values['containerID']}_{values['ifname']}.json"
    final = os.path.join(spool_dir, name)
    temp = os.path.join(spool_dir, f".{name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, request)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, final)
    dir_fd = os.open(spool_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def _restarting(spool_dir: str) -> bool:
    """The agent stopped gracefully less than RESTART_GRACE_SECONDS ago."""
    try:
        stopped = posix.stat(spool_dir + "/" + AGENT_STOPPED).st_mtime
    except OSError:
        return False
    return 0.0 <= time.time() - stopped <= RESTART_GRACE_SECONDS


def build_request(values: dict[str, str], config_text: str, deadline_seconds: float) -> bytes:
    """The request body: the CNI values, the remaining budget and the config as given."""
    fields = {**values, "protocol": PROTOCOL, "deadlineSeconds": round(deadline_seconds, 3),
              "sentAt": time.time()}
    head = to_json(fields)
    return (head[:-1] + ', "config": ' + config_text.strip() + "}").encode("utf-8")


def run(env: dict[str, str], stdin: bytes) -> tuple[int, str]:
    """Handle one invocation; return (exit code, what to print on stdout)."""
    started = time.monotonic()
    values = read_environment(env)
    command = values["command"]
    if command == "VERSION":
        return 0, to_json({"cniVersion": LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)})
    config, text = parse_config(command, stdin)
    version = str(config["cniVersion"])
    try:
        return _forward(values, config, text, started)
    except CniError as e:
        e.version = version
        raise


def _forward(values: dict[str, str], config: dict[str, object], text: str,
             started: float) -> tuple[int, str]:
    command = values["command"]
    version = str(config["cniVersion"])
    socket_path = str(config.get("agentSocket", DEFAULT_SOCKET))
    timeout = float(config.get("timeoutSeconds", DEFAULT_TIMEOUT))  # type: ignore[arg-type]
    deadline = started + timeout
    request = build_request(values, text, timeout)
    try:
        status, payload, warning = _http_request(socket_path, request, deadline)
    except AgentUnreachable as e:
        spool_dir = str(config.get("spoolDir", DEFAULT_SPOOL_DIR))
        if command == "STATUS" and _restarting(spool_dir):
            log("status_ok_agent_restarting", reason=_token(str(e)))
            return 0, ""
        if command == "DEL":
            try:
                path = _spool_delete(spool_dir, request, values)
            except OSError as spool_error:
                raise CniError(TRY_AGAIN_LATER, "the azure-cni agent is not reachable and "
                               "the DEL could not be spooled",
                               f"{e}; spooling to {spool_dir} failed: {spool_error}") from None
            log("del_spooled", container=values["containerID"], ifname=values["ifname"],
                path=path, reason=_token(str(e)))
            return 0, ""
        code = NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER
        raise CniError(code, "the azure-cni agent is not reachable",
                       f"{e}; is the azure-cni agent running on this node?") from None
    if warning:
        log("agent_warning", message=warning)
    try:
        answer = parse_json(payload.decode("utf-8")) if payload else None
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(TRY_AGAIN_LATER, "the azure-cni agent sent an unreadable answer",
                       str(e)) from None
    if status == 200:
        return 0, payload.decode("utf-8") if answer is not None else ""
    if isinstance(answer, dict) and isinstance(answer.get("code"), int):
        return 1, error_object(int(answer["code"]), str(answer.get("msg", "")),
                               str(answer.get("details", "")), version)
    raise CniError(TRY_AGAIN_LATER, f"the azure-cni agent answered HTTP {status}",
                   payload.decode("utf-8", "replace")[:500])


def main() -> None:
    try:
        env = environment()
        stdin = b""
        if env.get("CNI_COMMAND") != "VERSION":
            try:
                stdin = sys.stdin.buffer.read()
            except OSError as e:
                raise CniError(IO_FAILURE, "cannot read the network configuration from stdin",
                               str(e)) from None
        code, output = run(env, stdin)
    except CniError as e:
        code, output = 1, error_object(e.code, e.msg, e.details, e.version)
        log("error", code=e.code, msg=_token(e.msg))
    except Exception as e:  # noqa: BLE001 - the runtime must get an error object, never a traceback
        code, output = 1, error_object(INTERNAL, "internal error in the azure-vnet shim",
                                       f"{type(e).__name__}: {e}")
        log("internal_error", error=type(e).__name__)
    if output:
        sys.stdout.write(output)
        sys.stdout.write("\n")
    sys.stdout.flush()
    sys.exit(code)


def _token(text: str) -> str:
    return text.replace(" ", "_")


if __name__ == "__main__":
    main()

"""Installing the CNI plugin on the host: the shim, and the conflist that makes runtimes use it.

The conflist is written once the agent serves, knows its pool and has its egress rules in
place; until then a new node's runtime reports the network as not ready. After that it stays,
also while the agent restarts: removing it would make the runtime report the node NotReady
and fail every DEL (the shim fails ADD with "try again later" and spools DEL while the agent
is away). It goes when the agent refuses to start (the node cannot network pods until an
admin acts) and with ``uninstall`` (``azure-cni-agent --uninstall``).

Files, all written atomically (temporary file, fsync, rename):
- ``<cniBinDir>/azure-vnet.d/azure_vnet_shim.py``: the shim (``azure_cni/cni/shim.py``);
- ``<cniBinDir>/azure-vnet``: a five-line launcher with the host's python in its shebang. The
  shim is imported as a module rather than run as a script because python caches a module's
  bytecode and would otherwise compile the shim on every pod start (~4 ms on a small VM);
- ``<cniConfDir>/10-azure.conflist``: our plugin, then ``portmap`` for hostPorts.

containerd 1.6/1.7 ignore fsnotify *Create* events (containerd #11715), and a rename shows up
as one, so after the rename the conflist gets a trailing newline appended: a *Write* event,
which containerd does act on.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from azure_cni.api.podnet import POD_ANNOTATIONS_CAPABILITY
from azure_cni.api.settings import AgentSettings
from azure_cni.cni import shim

log = logging.getLogger(__name__)

PLUGIN_TYPE = "azure-vnet"
NETWORK_NAME = "azure-cni"
CONFLIST_NAME = "10-azure.conflist"
SHIM_DIR_NAME = "azure-vnet.d"
SHIM_MODULE = "azure_vnet_shim"
#: chained after ours for hostPorts; agent.extraPlugins come after it
PORTMAP: Mapping[str, Any] = {"type": "portmap", "capabilities": {"portMappings": True}}
#: the version containerd 1.6/1.7 (libcni <= 1.1) understand; cniVersions adds newer ones
BASE_VERSION = "1.0.0"
NEWEST_VERSION = "1.1.0"


class HostPythonMissing(RuntimeError):
    """The host has no usable python3 for the shim; the message says what was checked."""


def write_atomically(path: Path, content: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``content`` so that readers see the old or the new file only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def launcher_source(host_python: str) -> str:
    """The executable the runtime runs: it imports the shim from the directory beside it."""
    return (f"#!{host_python} -IS\n"
            "# azure-cni's CNI plugin, installed by the azure-cni agent; the code is in\n"
            f"# {SHIM_DIR_NAME}/{SHIM_MODULE}.py (a module, so python caches its bytecode).\n"
            "import sys\n"
            f"sys.path.insert(0, sys.argv[0].rpartition('/')[0] + '/{SHIM_DIR_NAME}')\n"
            f"from {SHIM_MODULE} import main\n"
            "main()\n")


def shim_source() -> bytes:
    return Path(shim.__file__).read_bytes()


def check_host_python(settings: AgentSettings, host_root: Path) -> Path:
    """The host's python for the shim; raise HostPythonMissing when it is not there."""
    python = host_root / settings.host_python.lstrip("/")
    if not python.exists():
        raise HostPythonMissing(
            f"{settings.host_python} does not exist on the host (looked at {python}); the "
            "azure-vnet CNI plugin needs python3 >= 3.8 on every node: install it, or set "
            "agent.hostPython to where it is")
    if not os.access(python, os.X_OK):
        raise HostPythonMissing(f"{settings.host_python} on the host is not executable")
    return python


def install_shim(settings: AgentSettings, host_root: Path = Path("/")) -> Path:
    """Write the shim and its launcher; when the host is our own root, prove that it runs."""
    check_host_python(settings, host_root)
    bin_dir = Path(settings.cni_bin_dir)
    module_dir = bin_dir / SHIM_DIR_NAME
    module_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    write_atomically(module_dir / f"{SHIM_MODULE}.py", shim_source())
    launcher = bin_dir / PLUGIN_TYPE
    write_atomically(launcher, launcher_source(settings.host_python).encode(), mode=0o755)
    if host_root == Path("/"):
        # also primes the bytecode cache, so the first pod does not pay for compiling
        probe = subprocess.run([str(launcher)], env={"CNI_COMMAND": "VERSION"},
                               capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode != 0 or "supportedVersions" not in probe.stdout:
            raise HostPythonMissing(
                f"{launcher} does not run with {settings.host_python}: exit {probe.returncode}, "
                f"{(probe.stderr or probe.stdout).strip()[:500]}")
    log.info("event=shim_installed path=%s python=%s", launcher, settings.host_python)
    return launcher


def plugin_versions(plugin: Path) -> set[str]:
    """The CNI versions a plugin binary reports with VERSION (empty if it cannot say)."""
    try:
        result = subprocess.run([str(plugin)], input='{"cniVersion":"1.0.0"}',
                                env={"CNI_COMMAND": "VERSION", "CNI_PATH": str(plugin.parent)},
                                capture_output=True, text=True, timeout=10, check=False)
        versions = json.loads(result.stdout).get("supportedVersions") or []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return set()
    return {str(v) for v in versions}


def conflist(settings: AgentSettings, chained: Sequence[Mapping[str, Any]], newest_ok: bool,
             spool_dir: Path) -> dict[str, Any]:
    """The network configuration list (pure)."""
    versions = [BASE_VERSION, NEWEST_VERSION] if newest_ok else [BASE_VERSION]
    plugins: list[dict[str, Any]] = [{
        "type": PLUGIN_TYPE,
        "agentSocket": settings.socket_path,
        "spoolDir": str(spool_dir),
        # the shim gives up after this; the agent's own wait for addresses fits inside it
        "timeoutSeconds": settings.add_wait_seconds + 5,
        # the pod's annotations, for a public IP or backend pools it asks for (api/podnet.py)
        "capabilities": {POD_ANNOTATIONS_CAPABILITY: True},
    }]
    plugins += [dict(plugin) for plugin in chained]
    return {"cniVersion": BASE_VERSION, "cniVersions": versions, "name": NETWORK_NAME,
            "plugins": plugins}


def spool_dir(settings: AgentSettings) -> Path:
    return Path(settings.state_dir) / "spool"


def stopped_marker(settings: AgentSettings) -> Path:
    """Where a gracefully stopped agent leaves word for the shim's STATUS (see the shim)."""
    return spool_dir(settings) / shim.AGENT_STOPPED


def mark_stopped(settings: AgentSettings) -> None:
    marker = stopped_marker(settings)
    marker.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(marker, b"", mode=0o600)


def install_conflist(settings: AgentSettings) -> Path:
    """Write the conflist; chain only plugins that exist (portmap, then agent.extraPlugins),
    at versions all of them speak."""
    bin_dir = Path(settings.cni_bin_dir)
    chained = []
    newest_ok = True
    for plugin in (PORTMAP, *settings.extra_plugins):
        name = str(plugin["type"])
        path = bin_dir / name
        if not path.exists():
            log.warning("event=chained_plugin_missing plugin=%s dir=%s; left out of the "
                        "conflist until it is installed", name, bin_dir)
            continue
        versions = plugin_versions(path)
        if BASE_VERSION not in versions:
            log.warning("event=chained_plugin_too_old plugin=%s versions=%s", name,
                        ",".join(sorted(versions)))
            continue
        chained.append(plugin)
        # libcni >= 1.2 picks the newest listed version and every plugin must speak it
        newest_ok = newest_ok and NEWEST_VERSION in versions
    document = conflist(settings, chained, newest_ok, spool_dir(settings))
    path = Path(settings.cni_conf_dir) / CONFLIST_NAME
    write_atomically(path, json.dumps(document, indent=2).encode())
    with path.open("a") as f:  # a Write event: containerd ignores the rename's Create
        f.write("\n")
    earlier = shadowing_configs(Path(settings.cni_conf_dir))
    if earlier:
        log.warning("event=conflist_shadowed path=%s earlier=%s; runtimes use the first file "
                    "in name order", path, ",".join(earlier))
    log.info("event=conflist_installed path=%s chained=%s versions=%s", path,
             ",".join(str(p["type"]) for p in chained) or "-", ",".join(document["cniVersions"]))
    return path


def shadowing_configs(conf_dir: Path) -> list[str]:
    """Network configurations in ``conf_dir`` that sort before ours: a runtime uses the first
    one in name order, so with any of them our plugin is never called."""
    try:
        names = [p.name for p in conf_dir.iterdir()]
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name < CONFLIST_NAME and not name.startswith(".")
                  and Path(name).suffix in (".conf", ".conflist", ".json"))


def remove_conflist(settings: AgentSettings) -> bool:
    """Remove our conflist (uninstall, or an agent that refuses to start); True if it was
    there."""
    path = Path(settings.cni_conf_dir) / CONFLIST_NAME
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    log.info("event=conflist_removed path=%s", path)
    return True


def uninstall(settings: AgentSettings) -> None:
    """Remove the conflist, the shim and its directory."""
    remove_conflist(settings)
    bin_dir = Path(settings.cni_bin_dir)
    (bin_dir / PLUGIN_TYPE).unlink(missing_ok=True)
    module_dir = bin_dir / SHIM_DIR_NAME
    if module_dir.is_dir():
        for path in sorted(module_dir.rglob("*"), reverse=True):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()
        module_dir.rmdir()


def uninstall_node(settings: AgentSettings, host_root: Path = Path("/")) -> list[Path]:
    """What a node keeps after ``helm uninstall``, removed from the node whose files are under
    ``host_root``: the conflist, the shim, the agent's store and socket directory. Returns
    what was there. (The agent's iptables chains: ``datapath.snat.teardown_snat``.)"""
    def on(path: str) -> Path:
        return host_root / path.lstrip("/")

    bin_dir = on(settings.cni_bin_dir)
    there = [p for p in (on(settings.cni_conf_dir) / CONFLIST_NAME, bin_dir / PLUGIN_TYPE,
                         bin_dir / SHIM_DIR_NAME, on(settings.state_dir),
                         on(settings.socket_path).parent) if p.exists()]
    for path in there:
        if path.is_dir():
            for child in sorted(path.rglob("*"), reverse=True):
                if child.is_dir() and not child.is_symlink():
                    child.rmdir()
                else:
                    child.unlink()
            try:
                path.rmdir()
            except OSError as e:  # a mount point (the agent's pod mounts these): now empty
                log.info("event=directory_kept path=%s reason=%s", path, e.strerror)
        else:
            path.unlink()
    log.info("event=node_uninstalled removed=%s", ",".join(map(str, there)) or "-")
    return there

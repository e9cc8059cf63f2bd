"""The agent's only conversation with Kubernetes: its own NodeIPPool, read and status-applied.

Three HTTP calls on one aiohttp session: LIST with a field selector on the pool's name, a
WATCH from the list's resourceVersion (read line by line, so 410 Gone and broken connections
reach the caller, which relists), and a server-side apply of the status subresource.

Written on aiohttp rather than kubernetes_asyncio: importing that client's generated models
costs about 50 MB of resident memory, on every node, for three requests whose JSON the agent
reads itself anyway (``api.nodeippool``). The operator keeps kubernetes_asyncio.

Credentials: a kubeconfig (``--kubeconfig`` or ``$KUBECONFIG``: server, CA, client
certificate or bearer token or token file) or else the pod's service account, whose token
file is read again for every request (the kubelet rotates bound tokens in place).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from azure_cni.api.nodeippool import AGENT_FIELD_MANAGER, GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(RuntimeError):
    """Neither a kubeconfig nor an in-cluster service account could be used."""


class WatchExpired(RuntimeError):
    """The server no longer has the resourceVersion the watch started from (410 Gone)."""


class KubeApiError(RuntimeError):
    """The API server refused a request; ``status`` is its HTTP status, ``body`` its answer."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"the API server answered {status}: {body[:500]}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to prove who the agent is."""

    server: str
    ssl: ssl.SSLContext
    #: the bearer token for each request ("" with a client certificate)
    token: Callable[[], str]


def _data_or_file(entry: Mapping[str, Any], key: str, base: Path) -> bytes | None:
    if entry.get(f"{key}-data"):
        return base64.b64decode(str(entry[f"{key}-data"]))
    if entry.get(key):
        return (base / str(entry[key])).read_bytes()
    return None


def _load_client_cert(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # ssl loads a certificate chain from files only: a private directory, gone at once
    with tempfile.TemporaryDirectory(prefix="azure-cni-kube-") as tmp:
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        context.load_cert_chain(cert_path, key_path)


def from_kubeconfig(path: Path) -> Connection:
    """The current context of a kubeconfig file."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
        contexts = {c["name"]: c["context"] for c in document.get("contexts") or ()}
        context = contexts[document["current-context"]]
        cluster = {c["name"]: c["cluster"] for c in document["clusters"]}[context["cluster"]]
        user = {u["name"]: u["user"] for u in document.get("users") or ()}.get(
            context.get("user"), {}) or {}
        base = path.parent
        tls = ssl.create_default_context()
        ca = _data_or_file(cluster, "certificate-authority", base)
        if ca is not None:
            tls.load_verify_locations(cadata=ca.decode())
        cert = _data_or_file(user, "client-certificate", base)
        key = _data_or_file(user, "client-key", base)
        if cert is not None and key is not None:
            _load_client_cert(tls, cert, key)
        server = str(cluster["server"]).rstrip("/")
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError, ssl.SSLError) as e:
        raise KubeConfigError(f"cannot use {path} to reach the Kubernetes API: {e!r}") from e
    if user.get("token"):
        token = str(user["token"])
        return Connection(server, tls, lambda: token)
    if user.get("tokenFile"):
        token_file = base / str(user["tokenFile"])
        return Connection(server, tls, lambda: token_file.read_text().strip())
    return Connection(server, tls, lambda: "")


def in_cluster(account: Path = SERVICE_ACCOUNT) -> Connection:
    """The pod's service account."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get(
        "KUBERNETES_SERVICE_PORT")
    token_file = account / "token"
    if not host or not port or not token_file.exists():
        raise KubeConfigError("cannot use the in-cluster service account to reach the "
                              "Kubernetes API: KUBERNETES_SERVICE_HOST/PORT or its token "
                              "is missing")
    tls = ssl.create_default_context(cafile=str(account / "ca.crt"))
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return Connection(server, tls, lambda: token_file.read_text().strip())


class KubePoolApi:
    """NodeIPPool access for one node's agent."""

    def __init__(self, connection: Connection, request_timeout: float = 30.0) -> None:
        self._connection = connection
        self._timeout = request_timeout
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=connection.ssl, limit=4))
        self._base = f"{connection.server}/apis/{GROUP}/{VERSION}/{PLURAL}"

    @classmethod
    async def connect(cls, kubeconfig: Path | None) -> KubePoolApi:
        """From a kubeconfig file (or ``$KUBECONFIG``), or the pod's service account."""
        path = kubeconfig or (Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG")
                              else None)
        return cls(from_kubeconfig(path) if path is not None else in_cluster())

    async def close(self) -> None:
        await self._session.close()

    def _headers(self, **extra: str) -> dict[str, str]:
        token = self._connection.token()
        return {"Accept": "application/json", **extra,
                **({"Authorization": f"Bearer {token}"} if token else {})}

    async def list_pool(self, name: str) -> tuple[dict[str, Any] | None, str]:
        """The pool (or None) and the resourceVersion to watch from."""
        async with self._session.get(
                self._base, params={"fieldSelector": f"metadata.name={name}"},
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self._timeout)) as response:
            listing = await _json(response)
        items = listing.get("items") or []
        return (items[0] if items else None), str(listing["metadata"]["resourceVersion"])

    async def watch_pool(self, name: str, resource_version: str,
                         timeout_seconds: int = 300) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event type, object) until the server ends the watch; WatchExpired on 410."""
        params = {"fieldSelector": f"metadata.name={name}", "watch": "true",
                  "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(timeout_seconds)}
        async with self._session.get(
                self._base, params=params, headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=timeout_seconds + 30,
                                              sock_connect=self._timeout)) as response:
            if response.status != 200:
                await _json(response)
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind = str(event.get("type"))
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise WatchExpired(str(obj.get("message")))
                    raise KubeApiError(int(obj.get("code") or 500), str(obj.get("message")))
                yield kind, obj

    async def apply_status(self, name: str, body: Mapping[str, Any]) -> None:
        """Server-side apply of the agent's status fields (field manager azure-cni-agent)."""
        async with self._session.patch(
                f"{self._base}/{name}/status",
                params={"fieldManager": AGENT_FIELD_MANAGER, "force": "true"},
                data=json.dumps(dict(body)),  # JSON is YAML: the apply patch type takes it
                headers=self._headers(**{"Content-Type": "application/apply-patch+yaml"}),
                timeout=aiohttp.ClientTimeout(total=self._timeout)) as response:
            await _json(response)


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    text = await response.text()
    if response.status >= 300:
        if response.status == 410:
            raise WatchExpired(text)
        raise KubeApiError(response.status, text)
    document = json.loads(text)
    if not isinstance(document, dict):
        raise KubeApiError(response.status, f"not a JSON object: {text[:200]}")
    return document

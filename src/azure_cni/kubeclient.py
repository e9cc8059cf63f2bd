"""A small Kubernetes API client on aiohttp, shared by the agent and the operator: JSON
objects in and out, one method per verb on an API path.

Written rather than taken from kubernetes_asyncio: importing that client's generated models
costs tens of MB of resident memory (about 50 MB on every node for the agent; 38 MB of the
operator's, issue 21) for requests whose JSON both processes read themselves anyway. Only the
cluster preflight, a short-lived Helm hook Job, still uses kubernetes_asyncio
(``preflight/run.py``).

Credentials: a kubeconfig (``--kubeconfig`` or ``$KUBECONFIG``: server, CA, client
certificate or bearer token or token file) or else the pod's service account, whose token
file is read again for every request (the kubelet rotates bound tokens in place).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")

#: the content types of the three kinds of PATCH
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class KubeConfigError(RuntimeError):
    """Neither a kubeconfig nor an in-cluster service account could be used."""


class KubeApiError(RuntimeError):
    """The API server refused a request; ``status`` is its HTTP status, ``body`` its answer."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"the API server answered {status}: {body[:500]}")
        self.status = status
        self.body = body

    @property
    def message(self) -> str:
        """The ``message`` of the Status object the API server answered, else the body."""
        try:
            return str(json.loads(self.body).get("message") or self.body)
        except (ValueError, AttributeError):
            return self.body


class WatchExpired(KubeApiError):
    """The server no longer has the resourceVersion the watch started from (410 Gone)."""

    def __init__(self, body: str) -> None:
        super().__init__(410, body)


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to prove who we are."""

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


def service_account_server(account: Path = SERVICE_ACCOUNT) -> tuple[str, Path] | None:
    """The API server at the address the kubelet gives every pod (``KUBERNETES_SERVICE_HOST``:
    the operator runs before cluster DNS does, being what gives CoreDNS its address) and the
    service account's token file; None outside a pod. kopf's login uses it too."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get(
        "KUBERNETES_SERVICE_PORT")
    token_file = account / "token"
    if not host or not port or not token_file.exists():
        return None
    return (f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"), token_file


def in_cluster(account: Path = SERVICE_ACCOUNT) -> Connection:
    """The pod's service account (``service_account_server``), its token read per request."""
    found = service_account_server(account)
    if found is None:
        raise KubeConfigError("cannot use the in-cluster service account to reach the "
                              "Kubernetes API: KUBERNETES_SERVICE_HOST/PORT or its token "
                              "is missing")
    server, token_file = found
    try:
        tls = ssl.create_default_context(cafile=str(account / "ca.crt"))
    except (OSError, ssl.SSLError) as e:
        raise KubeConfigError(f"cannot use the in-cluster service account's CA: {e!r}") from e
    return Connection(server, tls, lambda: token_file.read_text().strip())


def connection(kubeconfig: str | os.PathLike[str] | None = None) -> Connection:
    """From ``kubeconfig``, else ``$KUBECONFIG``, else the pod's service account."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    return from_kubeconfig(Path(path)) if path else in_cluster()


def api_path(api_version: str, plural: str, name: str = "", *, namespace: str = "",
             subresource: str = "") -> str:
    """The path of a collection or an object: ``/api/v1/...`` for the core group,
    ``/apis/<group>/<version>/...`` for the others."""
    path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class KubeClient:
    """JSON requests to one API server on one aiohttp session. Every method raises
    ``KubeApiError`` for an answer outside 2xx; connection errors are aiohttp's."""

    def __init__(self, connection: Connection, *, request_timeout: float = 30.0,
                 connections: int = 100) -> None:
        self._connection = connection
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._connect_timeout = request_timeout
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=connection.ssl, limit=connections))

    @classmethod
    async def connect(cls, kubeconfig: str | os.PathLike[str] | None = None, **kwargs: Any
                      ) -> KubeClient:
        """See ``connection``; async because the session belongs to the running loop."""
        return cls(connection(kubeconfig), **kwargs)

    async def close(self) -> None:
        await self._session.close()

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        token = self._connection.token()
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: Any = None, content_type: str = "application/json"
                      ) -> dict[str, Any]:
        """One request; the answer's JSON object."""
        async with self._session.request(
                method, self._connection.server + path, params=dict(params or {}),
                data=json.dumps(body) if body is not None else None,
                headers=self._headers(content_type if body is not None else None),
                timeout=self._timeout) as response:
            return await _json(response)

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=dict(body))

    async def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PUT", path, body=dict(body))

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=dict(patch), content_type=MERGE_PATCH)

    async def json_patch(self, path: str, operations: Sequence[Mapping[str, Any]]
                         ) -> dict[str, Any]:
        return await self.request("PATCH", path, body=[dict(op) for op in operations],
                                  content_type=JSON_PATCH)

    async def apply(self, path: str, body: Mapping[str, Any], field_manager: str, *,
                    force: bool = True) -> dict[str, Any]:
        """Server-side apply (JSON is YAML: the apply patch type takes it)."""
        params = {"fieldManager": field_manager, **({"force": "true"} if force else {})}
        return await self.request("PATCH", path, params=params, body=dict(body),
                                  content_type=APPLY_PATCH)

    async def delete(self, path: str) -> dict[str, Any]:
        return await self.request("DELETE", path)

    async def watch(self, path: str, params: Mapping[str, str], resource_version: str,
                    timeout_seconds: int = 300) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event type, object) until the server ends the watch; ``WatchExpired`` on 410."""
        query = {**params, "watch": "true", "resourceVersion": resource_version,
                 "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        async with self._session.get(
                self._connection.server + path, params=query, headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=timeout_seconds + 30,
                                              sock_connect=self._connect_timeout)) as response:
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


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    text = await response.text()
    if response.status >= 300:
        if response.status == 410:
            raise WatchExpired(text)
        raise KubeApiError(response.status, text)
    document = json.loads(text) if text else {}
    if not isinstance(document, dict):
        raise KubeApiError(response.status, f"not a JSON object: {text[:200]}")
    return document

"""A chart's container as kubelet hands it to the container runtime (CRI), without I/O.

Kubelet turns a Pod into two CRI requests: a sandbox (namespaces, cgroup parent, the pod's
seccomp profile) and a container (image, command, args, environment, mounts, security
context, resources). ``sandbox_config`` and ``container_config`` do the same for one container
of a rendered workload (a Deployment's or a DaemonSet's pod template), for the fields the
azure-cni chart uses; any other field that changes how the container runs raises
``Unsupported``, so a new field in the chart is noticed instead of silently dropped.
``plan_volumes`` says what each volume holds; the caller writes it (``chartrun``).

The configs are crictl's JSON (the CRI's protobuf field names).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

#: CRI NamespaceMode
NAMESPACE_POD, NAMESPACE_CONTAINER, NAMESPACE_NODE = 0, 1, 2
#: CRI SecurityProfile.ProfileType
SECCOMP_RUNTIME_DEFAULT, SECCOMP_UNCONFINED, SECCOMP_LOCALHOST = 0, 1, 2
#: CRI MountPropagation
PROPAGATION = {None: 0, "None": 0, "HostToContainer": 1, "Bidirectional": 2}
#: where the service account admission plugin mounts a pod's token (automountServiceAccountToken)
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_ACCOUNT_VOLUME = "kube-api-access"
#: kubelet's CFS period, and the CPU shares of one core
CPU_PERIOD_US = 100_000
SHARES_PER_CPU = 1024
#: pod and container securityContext fields that change nothing for a container run here
#: (fsGroupChangePolicy applies to volumes kubelet owns; seLinuxOptions on an SELinux host)
_IGNORED_SECURITY = frozenset({"fsGroupChangePolicy", "seLinuxOptions"})


class Unsupported(ValueError):
    """The workload uses a field this translation does not implement."""


@dataclass(frozen=True)
class PodIdentity:
    """What the API server and the scheduler would have given the pod."""

    name: str
    namespace: str
    uid: str
    node_name: str
    host_ip: str
    #: the pod's address; a host-network pod's is its node's
    pod_ip: str = ""


@dataclass(frozen=True)
class Workload:
    """One container of a rendered Deployment or DaemonSet, with its pod template's spec."""

    kind: str
    name: str
    pod_spec: Mapping[str, Any]
    container: Mapping[str, Any]

    @property
    def host_network(self) -> bool:
        return bool(self.pod_spec.get("hostNetwork"))

    @property
    def service_account(self) -> str:
        return str(self.pod_spec.get("serviceAccountName") or "default")

    @property
    def automount_token(self) -> bool:
        return self.pod_spec.get("automountServiceAccountToken") is not False


def find_workload(manifests: Sequence[Mapping[str, Any]], kind: str, container: str
                  ) -> Workload:
    """The one ``kind`` (Deployment, DaemonSet, ...) whose pod template has ``container``."""
    found = []
    for obj in manifests:
        if obj.get("kind") != kind:
            continue
        spec = obj["spec"]["template"]["spec"]
        found += [Workload(kind, obj["metadata"]["name"], spec, c)
                  for c in spec.get("containers") or () if c.get("name") == container]
    if len(found) != 1:
        raise Unsupported(f"expected one {kind} with a container {container!r}, "
                          f"found {len(found)}")
    return found[0]


def find_object(objects: Sequence[Mapping[str, Any]], kind: str, namespace: str, name: str
                ) -> Mapping[str, Any] | None:
    for obj in objects:
        meta = obj.get("metadata") or {}
        if obj.get("kind") == kind and meta.get("name") == name and \
                (meta.get("namespace") or namespace) == namespace:
            return obj
    return None


# -- quantities ---------------------------------------------------------------------------

_SUFFIX: dict[str, int | Fraction] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(value: str | int | float) -> Fraction:
    """A Kubernetes resource quantity ("50m", "192Mi", "1.5", 2) as an exact number."""
    match = _QUANTITY.match(str(value).strip())
    if match is None or match[2] not in _SUFFIX:
        raise Unsupported(f"not a resource quantity: {value!r}")
    return Fraction(match[1]) * _SUFFIX[match[2]]


def resources(container: Mapping[str, Any]) -> dict[str, int]:
    """The CRI's LinuxContainerResources for a container's requests and limits, as kubelet
    computes them: CPU request -> shares, CPU limit -> CFS quota, memory limit -> limit."""
    spec = container.get("resources") or {}
    requests, limits = spec.get("requests") or {}, spec.get("limits") or {}
    out: dict[str, int] = {}
    cpu_request = requests.get("cpu", limits.get("cpu"))
    if cpu_request is not None:
        out["cpu_shares"] = max(2, int(parse_quantity(cpu_request) * SHARES_PER_CPU))
    if "cpu" in limits:
        out["cpu_period"] = CPU_PERIOD_US
        out["cpu_quota"] = max(1000, int(parse_quantity(limits["cpu"]) * CPU_PERIOD_US))
    if "memory" in limits:
        out["memory_limit_in_bytes"] = int(parse_quantity(limits["memory"]))
    return out


# -- environment --------------------------------------------------------------------------

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command, args and env values: a defined variable
    is replaced, an undefined reference stays as written, ``$$`` is a literal ``$``."""
    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return env.get(match[1], match[0])

    return _VAR_REF.sub(one, text)


def service_env(host: str, port: int) -> dict[str, str]:
    """The variables kubelet gives every container for the ``kubernetes`` Service (the ones
    an in-cluster client reads), pointing at ``host:port``."""
    return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
            "KUBERNETES_PORT": f"tcp://{host}:{port}",
            f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
            f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
            f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
            f"KUBERNETES_PORT_{port}_TCP_ADDR": host}


def _field_ref(path: str, pod: PodIdentity, workload: Workload) -> str:
    values = {"metadata.name": pod.name, "metadata.namespace": pod.namespace,
              "metadata.uid": pod.uid, "spec.nodeName": pod.node_name,
              "spec.serviceAccountName": workload.service_account,
              "status.hostIP": pod.host_ip, "status.hostIPs": pod.host_ip,
              "status.podIP": pod.pod_ip or (pod.host_ip if workload.host_network else ""),
              "status.podIPs": pod.pod_ip or (pod.host_ip if workload.host_network else "")}
    if path not in values:
        raise Unsupported(f"fieldRef {path!r}")
    return values[path]


def _key_ref(kind: str, ref: Mapping[str, Any], namespace: str,
             objects: Sequence[Mapping[str, Any]]) -> str | None:
    obj = find_object(objects, kind, namespace, str(ref.get("name")))
    key = str(ref.get("key"))
    if obj is not None:
        if kind == "Secret" and key in (obj.get("stringData") or {}):
            return str(obj["stringData"][key])
        data = obj.get("data") or {}
        if key in data:
            return base64.b64decode(data[key]).decode() if kind == "Secret" else str(data[key])
    if ref.get("optional"):
        return None
    raise Unsupported(f"{kind} {namespace}/{ref.get('name')} has no key {key!r} (and the "
                      "reference is not optional)")


def container_env(workload: Workload, pod: PodIdentity, objects: Sequence[Mapping[str, Any]],
                  base: Mapping[str, str]) -> dict[str, str]:
    """The container's environment as kubelet builds it: ``base`` (the Service variables),
    then each ``env`` entry in order, each able to refer to the ones before it."""
    env = dict(base)
    if workload.container.get("envFrom"):
        raise Unsupported("envFrom")
    for entry in workload.container.get("env") or ():
        name = str(entry["name"])
        if "value" in entry:
            env[name] = expand(str(entry["value"]), env)
            continue
        source = entry.get("valueFrom") or {}
        value: str | None
        if "fieldRef" in source:
            value = _field_ref(str(source["fieldRef"]["fieldPath"]), pod, workload)
        elif "secretKeyRef" in source:
            value = _key_ref("Secret", source["secretKeyRef"], pod.namespace, objects)
        elif "configMapKeyRef" in source:
            value = _key_ref("ConfigMap", source["configMapKeyRef"], pod.namespace, objects)
        else:
            raise Unsupported(f"env {name}: valueFrom {sorted(source)}")
        if value is not None:
            env[name] = value
    return env


# -- security -----------------------------------------------------------------------------


def _merged_security(workload: Workload) -> dict[str, Any]:
    """The container's securityContext over the pod's (the container's fields win)."""
    pod_sc = dict(workload.pod_spec.get("securityContext") or {})
    container_sc = dict(workload.container.get("securityContext") or {})
    for key in set(pod_sc) - _IGNORED_SECURITY - {
            "runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile", "supplementalGroups",
            "fsGroup"}:
        raise Unsupported(f"pod securityContext.{key}")
    merged = {k: v for k, v in pod_sc.items() if k not in ("supplementalGroups", "fsGroup")}
    merged.update(container_sc)
    return merged


def _seccomp(profile: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if profile is None:
        return None
    kind = profile.get("type")
    if kind == "RuntimeDefault":
        return {"profile_type": SECCOMP_RUNTIME_DEFAULT}
    if kind == "Unconfined":
        return {"profile_type": SECCOMP_UNCONFINED}
    raise Unsupported(f"seccompProfile {kind!r}")


def run_as(workload: Workload, image_user: tuple[int, int] | None
           ) -> tuple[int | None, int | None]:
    """The uid and gid the container runs as: its securityContext's, else the image's USER
    (None: the runtime takes it from the image and it is not numeric)."""
    sc = _merged_security(workload)
    uid = sc.get("runAsUser", image_user[0] if image_user else None)
    gid = sc.get("runAsGroup", image_user[1] if image_user else None)
    if sc.get("runAsNonRoot") and (uid is None or int(uid) == 0):
        # kubelet refuses to start it (CreateContainerConfigError)
        raise Unsupported("runAsNonRoot is set but the container would run as root (or as "
                          "a user that is not numeric)")
    return (None if uid is None else int(uid)), (None if gid is None else int(gid))


def security_context(workload: Workload, image_user: tuple[int, int] | None
                     ) -> dict[str, Any]:
    """The CRI LinuxContainerSecurityContext kubelet sends for the container."""
    sc = _merged_security(workload)
    known = {"runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile", "privileged",
             "allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities",
             *_IGNORED_SECURITY}
    for key in set(sc) - known:
        raise Unsupported(f"securityContext.{key}")
    uid, gid = run_as(workload, image_user)
    caps = sc.get("capabilities") or {}
    pod_sc = workload.pod_spec.get("securityContext") or {}
    groups = [int(g) for g in pod_sc.get("supplementalGroups") or ()]
    if "fsGroup" in pod_sc:
        groups.append(int(pod_sc["fsGroup"]))
    privileged = bool(sc.get("privileged"))
    out: dict[str, Any] = {
        "privileged": privileged,
        "readonly_rootfs": bool(sc.get("readOnlyRootFilesystem")),
        # kubelet: no_new_privs unless privilege escalation is allowed (true by default)
        "no_new_privs": sc.get("allowPrivilegeEscalation") is False and not privileged,
        "capabilities": {"add_capabilities": [str(c) for c in caps.get("add") or ()],
                         "drop_capabilities": [str(c) for c in caps.get("drop") or ()]},
        "namespace_options": namespace_options(workload),
    }
    if uid is not None:
        out["run_as_user"] = {"value": uid}
        if gid is not None:
            out["run_as_group"] = {"value": gid}
    if groups:
        out["supplemental_groups"] = groups
    seccomp = _seccomp(sc.get("seccompProfile"))
    if seccomp is not None:
        out["seccomp"] = seccomp
    return out


def namespace_options(workload: Workload) -> dict[str, int]:
    spec = workload.pod_spec
    return {"network": NAMESPACE_NODE if spec.get("hostNetwork") else NAMESPACE_POD,
            "pid": NAMESPACE_NODE if spec.get("hostPID") else NAMESPACE_CONTAINER,
            "ipc": NAMESPACE_NODE if spec.get("hostIPC") else NAMESPACE_POD}


# -- volumes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumePlan:
    """What one volume is: files to write (configMap, secret, the token), an empty directory,
    or a path of the node (hostPath)."""

    name: str
    kind: str
    files: Mapping[str, tuple[bytes, int]] = field(default_factory=dict)
    host_path: str = ""
    host_type: str = ""


@dataclass(frozen=True)
class MountPlan:
    volume: str
    container_path: str
    read_only: bool
    propagation: int
    sub_path: str = ""


def _projected_files(source: Mapping[str, Any], data: Mapping[str, bytes], mode: int
                     ) -> dict[str, tuple[bytes, int]]:
    items = source.get("items")
    if not items:
        return {key: (value, mode) for key, value in data.items()}
    files = {}
    for item in items:
        key = str(item["key"])
        if key not in data:
            if source.get("optional"):
                continue
            raise Unsupported(f"volume item {key!r} is not in its object")
        files[str(item["path"])] = (data[key], int(item.get("mode", mode)))
    return files


def plan_volumes(workload: Workload, namespace: str, objects: Sequence[Mapping[str, Any]]
                 ) -> dict[str, VolumePlan]:
    """Every volume of the pod, by name (the service account token's included when mounted:
    its files, ``token`` among them, are the caller's to fill)."""
    plans: dict[str, VolumePlan] = {}
    for volume in workload.pod_spec.get("volumes") or ():
        name = str(volume["name"])
        if "configMap" in volume:
            source = volume["configMap"]
            obj = find_object(objects, "ConfigMap", namespace, str(source["name"]))
            if obj is None and not source.get("optional"):
                raise Unsupported(f"volume {name}: ConfigMap {source['name']} is not given")
            data = {k: str(v).encode() for k, v in ((obj or {}).get("data") or {}).items()}
            data |= {k: base64.b64decode(v)
                     for k, v in ((obj or {}).get("binaryData") or {}).items()}
            plans[name] = VolumePlan(name, "configMap", _projected_files(
                source, data, int(source.get("defaultMode", 0o644))))
        elif "secret" in volume:
            source = volume["secret"]
            obj = find_object(objects, "Secret", namespace, str(source["secretName"]))
            if obj is None and not source.get("optional"):
                raise Unsupported(f"volume {name}: Secret {source['secretName']} is not given")
            data = {k: base64.b64decode(v) for k, v in ((obj or {}).get("data") or {}).items()}
            data |= {k: str(v).encode()
                     for k, v in ((obj or {}).get("stringData") or {}).items()}
            plans[name] = VolumePlan(name, "secret", _projected_files(
                source, data, int(source.get("defaultMode", 0o644))))
        elif "emptyDir" in volume:
            plans[name] = VolumePlan(name, "emptyDir")
        elif "hostPath" in volume:
            source = volume["hostPath"]
            plans[name] = VolumePlan(name, "hostPath", host_path=str(source["path"]),
                                     host_type=str(source.get("type") or ""))
        else:
            raise Unsupported(f"volume {name}: {sorted(set(volume) - {'name'})}")
    if workload.automount_token:
        plans[SERVICE_ACCOUNT_VOLUME] = VolumePlan(SERVICE_ACCOUNT_VOLUME, "serviceAccountToken")
    return plans


def plan_mounts(workload: Workload) -> list[MountPlan]:
    """The container's volumeMounts (and the token's, where the admission plugin puts it)."""
    mounts = []
    for mount in workload.container.get("volumeMounts") or ():
        if mount.get("subPathExpr"):
            raise Unsupported("volumeMounts.subPathExpr")
        propagation = mount.get("mountPropagation")
        if propagation not in PROPAGATION:
            raise Unsupported(f"mountPropagation {propagation!r}")
        mounts.append(MountPlan(str(mount["name"]), str(mount["mountPath"]),
                                bool(mount.get("readOnly")), PROPAGATION[propagation],
                                str(mount.get("subPath") or "")))
    if workload.automount_token:
        mounts.append(MountPlan(SERVICE_ACCOUNT_VOLUME, SERVICE_ACCOUNT_DIR, True, 0))
    return mounts


# -- the two CRI requests -----------------------------------------------------------------


def sandbox_config(workload: Workload, pod: PodIdentity, *, cgroup_parent: str,
                   log_directory: str) -> dict[str, Any]:
    """RunPodSandbox's config for the pod."""
    pod_sc = workload.pod_spec.get("securityContext") or {}
    security: dict[str, Any] = {"namespace_options": namespace_options(workload)}
    seccomp = _seccomp(pod_sc.get("seccompProfile"))
    if seccomp is not None:
        security["seccomp"] = seccomp
    return {"metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid,
                         "attempt": 0},
            "log_directory": log_directory,
            "labels": {"io.kubernetes.pod.name": pod.name,
                       "io.kubernetes.pod.namespace": pod.namespace},
            "linux": {"cgroup_parent": cgroup_parent, "security_context": security}}


def container_config(workload: Workload, *, image: str, env: Mapping[str, str],
                     mounts: Sequence[Mapping[str, Any]], log_path: str,
                     image_user: tuple[int, int] | None,
                     command: Sequence[str] | None = None) -> dict[str, Any]:
    """CreateContainer's config: ``command`` replaces the chart's command and args (to run
    something else under the same conditions); ``mounts`` are CRI Mounts with host paths."""
    container = workload.container
    for key in ("lifecycle", "workingDir", "stdin", "tty"):
        if container.get(key):
            raise Unsupported(f"container.{key}")
    config: dict[str, Any] = {
        "metadata": {"name": str(container["name"]), "attempt": 0},
        "image": {"image": image},
        "envs": [{"key": k, "value": v} for k, v in env.items()],
        "mounts": list(mounts),
        "log_path": log_path,
        "linux": {"resources": resources(container),
                  "security_context": security_context(workload, image_user)},
    }
    if command is not None:
        config["command"] = list(command)
    else:
        if container.get("command"):
            config["command"] = [expand(str(a), env) for a in container["command"]]
        if container.get("args"):
            config["args"] = [expand(str(a), env) for a in container["args"]]
    return config


def probe_url(workload: Workload, probe: str = "readinessProbe") -> str | None:
    """The URL of the container's HTTP ``probe`` as kubelet calls it from the node (a
    host-network pod's address is the node's loopback here), or None without one."""
    spec = workload.container.get(probe)
    if not spec:
        return None
    http = spec.get("httpGet")
    if http is None:
        raise Unsupported(f"{probe} without httpGet")
    port = http["port"]
    if isinstance(port, str) and not port.isdigit():
        named = [p["containerPort"] for p in workload.container.get("ports") or ()
                 if p.get("name") == port]
        if not named:
            raise Unsupported(f"{probe}: no container port named {port!r}")
        port = named[0]
    if not workload.host_network and not http.get("host"):
        raise Unsupported(f"{probe} of a pod that is not in the host network")
    host = http.get("host") or "127.0.0.1"
    scheme = str(http.get("scheme") or "HTTP").lower()
    return f"{scheme}://{host}:{int(port)}{http.get('path') or '/'}"

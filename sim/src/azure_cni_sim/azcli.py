"""The ARM requests of the ``az`` commands ``docs/install-azure.md`` gives an admin, sent to
the emulator with an admin's token.

The Azure CLI is not installed here (it needs a login to Entra ID, which the simulation does
not run), so each method below sends what its ``az`` command sends to Resource Manager; the
emulator answers as ARM does. ``AzCli.run`` takes the command line as the guide writes it, so
a test can follow the guide and notice a command it does not know.
"""

from __future__ import annotations

import json
import shlex
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure_cni_sim.armstate import DEFAULT_SUBSCRIPTION

MSI_API = "2023-01-31"
AUTHORIZATION_API = "2022-04-01"
COMPUTE_API = "2026-04-01"


class AzError(RuntimeError):
    """ARM refused a request (or the command is not one this module knows)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


@dataclass
class AzCli:
    """An admin's ``az`` against the emulator at ``arm_url``."""

    arm_url: str
    ca_path: Path
    token: str
    subscription: str = DEFAULT_SUBSCRIPTION
    #: files ``@file`` arguments name, relative to this directory
    workdir: Path = field(default_factory=Path.cwd)

    # -- HTTP ---------------------------------------------------------------------------------

    def request(self, method: str, path: str, api_version: str, body: Any = None,
                query: str = "") -> Any:
        url = (f"{self.arm_url.rstrip('/')}{path}?api-version={api_version}"
               + (f"&{query}" if query else ""))
        request = urllib.request.Request(url, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        if body is not None:
            request.data = json.dumps(body).encode()
        context = ssl.create_default_context(cafile=str(self.ca_path))
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            error = (json.loads(e.read() or b"{}").get("error") or {})
            raise AzError(e.code, str(error.get("code", "")),
                          str(error.get("message", ""))) from None
        return json.loads(raw) if raw else None

    def _rg(self, resource_group: str) -> str:
        return f"/subscriptions/{self.subscription}/resourceGroups/{resource_group}"

    # -- the commands -------------------------------------------------------------------------

    def identity_create(self, resource_group: str, name: str, location: str = "eastus"
                        ) -> dict[str, Any]:
        """``az identity create -g RG -n NAME``: its ``id``, ``clientId``, ``principalId``."""
        made = self.request("PUT", f"{self._rg(resource_group)}/providers/"
                            f"Microsoft.ManagedIdentity/userAssignedIdentities/{name}", MSI_API,
                            {"location": location})
        return {"id": made["id"], "name": made["name"], **made["properties"]}

    def role_definition_create(self, definition: Mapping[str, Any]) -> dict[str, Any]:
        """``az role definition create --role-definition @role.json`` (the CLI's JSON:
        Name, Description, Actions, NotActions, AssignableScopes): a PUT under a new GUID at
        the subscription."""
        body = {"properties": {
            "roleName": definition["Name"], "description": definition.get("Description", ""),
            "type": "CustomRole",
            "permissions": [{"actions": list(definition.get("Actions", [])),
                             "notActions": list(definition.get("NotActions", [])),
                             "dataActions": [], "notDataActions": []}],
            "assignableScopes": list(definition["AssignableScopes"])}}
        made: dict[str, Any] = self.request(
            "PUT", f"/subscriptions/{self.subscription}/providers/Microsoft.Authorization/"
            f"roleDefinitions/{uuid.uuid4()}", AUTHORIZATION_API, body)
        return made

    def role_id(self, role: str, scope: str) -> str:
        """A role's definition ID from its name, as ``az role assignment create --role``
        finds it (``$filter=roleName eq '...'`` at the scope)."""
        found = self.request("GET", f"{scope}/providers/Microsoft.Authorization/"
                             "roleDefinitions", AUTHORIZATION_API,
                             query=urllib.parse.quote(f"$filter=roleName eq '{role}'",
                                                        safe="=$"))["value"]
        if not found:
            raise AzError(404, "RoleNotFound", f"Role '{role}' doesn't exist.")
        return str(found[0]["id"])

    def role_assignment_create(self, principal_id: str, role: str, scope: str,
                               principal_type: str = "ServicePrincipal") -> dict[str, Any]:
        """``az role assignment create --assignee-object-id ID --assignee-principal-type
        ServicePrincipal --role ROLE --scope SCOPE``."""
        body = {"properties": {"roleDefinitionId": self.role_id(role, scope),
                               "principalId": principal_id, "principalType": principal_type}}
        made: dict[str, Any] = self.request(
            "PUT", f"{scope}/providers/Microsoft.Authorization/roleAssignments/{uuid.uuid4()}",
            AUTHORIZATION_API, body)
        return made

    def role_assignment_list(self, principal_id: str, scope: str) -> list[dict[str, Any]]:
        """``az role assignment list --assignee-object-id ID --scope SCOPE``."""
        found: list[dict[str, Any]] = self.request(
            "GET", f"{scope}/providers/Microsoft.Authorization/roleAssignments",
            AUTHORIZATION_API, query=urllib.parse.quote(
                f"$filter=principalId eq '{principal_id}'", safe="=$"))["value"]
        return found

    def role_assignment_delete(self, principal_id: str, scope: str) -> None:
        """``az role assignment delete --assignee-object-id ID --scope SCOPE``."""
        for assignment in self.role_assignment_list(principal_id, scope):
            if assignment["properties"]["scope"].lower() == scope.lower():
                self.request("DELETE", assignment["id"], AUTHORIZATION_API)

    def vm_identity_assign(self, resource_group: str, vm: str, identity_id: str
                           ) -> dict[str, Any]:
        """``az vm identity assign -g RG -n VM --identities ID`` (an update of the VM)."""
        updated: dict[str, Any] = self.request(
            "PATCH", f"{self._rg(resource_group)}/providers/Microsoft.Compute/"
            f"virtualMachines/{vm}", COMPUTE_API,
            {"identity": {"type": "UserAssigned", "userAssignedIdentities": {identity_id: {}}}})
        return updated

    def vmss_identity_assign(self, resource_group: str, scale_set: str, identity_id: str
                             ) -> dict[str, Any]:
        """``az vmss identity assign -g RG -n SET --identities ID`` (then ``az vmss
        update-instances``, which the emulator's instances need not)."""
        updated: dict[str, Any] = self.request(
            "PATCH", f"{self._rg(resource_group)}/providers/Microsoft.Compute/"
            f"virtualMachineScaleSets/{scale_set}", COMPUTE_API,
            {"identity": {"type": "UserAssigned", "userAssignedIdentities": {identity_id: {}}}})
        return updated

    def identity_show(self, identity_id: str) -> dict[str, Any]:
        """``az identity show --ids ID``."""
        found = self.request("GET", identity_id, MSI_API)
        return {"id": found["id"], "name": found["name"], **found["properties"]}

    def vm_list(self, resource_group: str) -> list[dict[str, Any]]:
        """``az vm list -g RG``."""
        found: list[dict[str, Any]] = self.request(
            "GET", f"{self._rg(resource_group)}/providers/Microsoft.Compute/virtualMachines",
            COMPUTE_API)["value"]
        return found

    def vmss_list(self, resource_group: str) -> list[dict[str, Any]]:
        """``az vmss list -g RG``."""
        found: list[dict[str, Any]] = self.request(
            "GET", f"{self._rg(resource_group)}/providers/Microsoft.Compute/"
            "virtualMachineScaleSets", COMPUTE_API)["value"]
        return found

    def vmss_update_instances(self, resource_group: str, scale_set: str) -> None:
        """``az vmss update-instances -g RG -n SET --instance-ids '*'``."""
        self.request("POST", f"{self._rg(resource_group)}/providers/Microsoft.Compute/"
                     f"virtualMachineScaleSets/{scale_set}/manualupgrade", COMPUTE_API,
                     {"instanceIds": ["*"]})

    # -- command lines ------------------------------------------------------------------------

    def run(self, line: str) -> Any:
        """One ``az`` command line, as the guide writes it (variables already expanded)."""
        argv = shlex.split(line)
        if argv[:1] != ["az"]:
            raise AzError(0, "NotAz", f"not an az command: {line}")
        words = []
        for arg in argv[1:]:  # the command's words come before its first option
            if arg.startswith("-"):
                break
            words.append(arg)
        command = " ".join(words)
        options = _options(argv[1:])
        handler = self._commands().get(command)
        if handler is None:
            raise AzError(0, "UnknownCommand",
                          f"az {command}: not a command this simulation knows ({line})")
        return handler(options)

    def _commands(self) -> dict[str, Callable[[dict[str, str]], Any]]:
        def role_definition(o: dict[str, str]) -> Any:
            source = o["--role-definition"]
            text = (self.workdir / source[1:]).read_text() if source.startswith("@") \
                else source
            return self.role_definition_create(json.loads(text))

        return {
            "identity create": lambda o: self.identity_create(o["-g"], o["-n"]),
            "role definition create": role_definition,
            "role assignment create": lambda o: self.role_assignment_create(
                o["--assignee-object-id"], o["--role"], o["--scope"],
                o.get("--assignee-principal-type", "ServicePrincipal")),
            "role assignment delete": lambda o: self.role_assignment_delete(
                o["--assignee-object-id"], o["--scope"]),
            "vm identity assign": lambda o: self.vm_identity_assign(o["-g"], o["-n"],
                                                                    o["--identities"]),
            "vmss identity assign": lambda o: self.vmss_identity_assign(o["-g"], o["-n"],
                                                                        o["--identities"]),
            "identity show": lambda o: self.identity_show(o["--ids"]),
            "vm list": lambda o: self.vm_list(o["-g"]),
            "vmss list": lambda o: self.vmss_list(o["-g"]),
            "vmss update-instances": lambda o: self.vmss_update_instances(o["-g"], o["-n"]),
            "role assignment list": lambda o: self.role_assignment_list(
                o["--assignee-object-id"], o["--scope"]),
        }


_ALIASES = {"--resource-group": "-g", "--name": "-n"}


def _options(argv: Sequence[str]) -> dict[str, str]:
    """``--flag value`` pairs (``-g``/``-n`` and their long forms alike)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        if argv[i].startswith("-"):
            key = _ALIASES.get(argv[i], argv[i])
            if "=" in key:
                key, value = key.split("=", 1)
                out[_ALIASES.get(key, key)] = value
            elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                out[key] = argv[i + 1]
                i += 1
            else:
                out[key] = ""
        i += 1
    return out


def query(result: Any, expression: str) -> Any:
    """The part of JMESPath the guide's ``--query`` uses: ``a.b`` and ``[].a``."""
    if not expression:
        return result
    if expression.startswith("[]"):
        rest = expression[2:].lstrip(".")
        return [query(item, rest) for item in result or []]
    head, _, rest = expression.partition(".")
    value = result.get(head) if isinstance(result, Mapping) else None
    return query(value, rest) if rest else value


def render(result: Any, output: str) -> str:
    """``-o json`` (the default) or ``-o tsv``."""
    if output == "tsv":
        items = result if isinstance(result, list) else [] if result is None else [result]
        return "".join(f"{item}\n" for item in items)
    return json.dumps(result, indent=2) + "\n" if result is not None else ""


#: where ``python -m azure_cni_sim.azcli`` finds the emulator and the admin's token
ENV_ARM, ENV_CA, ENV_TOKEN, ENV_WORKDIR = ("AZURE_CNI_SIM_ARM", "AZURE_CNI_SIM_CA",
                                           "AZURE_CNI_SIM_TOKEN", "AZURE_CNI_SIM_WORKDIR")


def main(argv: Sequence[str] | None = None) -> int:
    """``az ...`` on the emulator: the test of docs/install-azure.md puts this on PATH as
    ``az``. The command line is the guide's; the answer is printed as az prints it."""
    import os  # noqa: PLC0415
    import sys  # noqa: PLC0415

    args = list(sys.argv[1:] if argv is None else argv)
    options = _options(args)
    cli = AzCli(os.environ[ENV_ARM], Path(os.environ[ENV_CA]), os.environ[ENV_TOKEN],
                workdir=Path(os.environ.get(ENV_WORKDIR) or Path.cwd()))
    try:
        result = cli.run(shlex.join(["az", *args]))
    except AzError as e:
        sys.stderr.write(f"ERROR: {e}\n")
        return 1
    sys.stdout.write(render(query(result, options.get("--query", "")),
                            options.get("-o", options.get("--output", "json"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What an identity may do on Azure, as the permissions API reports it
(``GET {scope}/providers/Microsoft.Authorization/permissions``): the permission sets of every
role assignment that applies at the scope.

An action is allowed when some set has an ``actions`` pattern that matches it and no
``notActions`` pattern of that same set that matches it (``*`` matches anything, case does not
matter): Azure RBAC adds assignments up and has a set's ``notActions`` subtract from that set
only. The decision is pure; ``AzureAdapter.get_permissions`` reads the sets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

PERMISSIONS_API_VERSION = "2022-04-01"


@dataclass(frozen=True)
class PermissionSet:
    actions: tuple[str, ...]
    not_actions: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PermissionSet:
        return cls(tuple(str(a) for a in raw.get("actions") or ()),
                   tuple(str(a) for a in raw.get("notActions") or ()))


def _matches(pattern: str, action: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, action, flags=re.IGNORECASE) is not None


def allowed(action: str, sets: Iterable[PermissionSet]) -> bool:
    """True when one of ``sets`` grants ``action``."""
    return any(any(_matches(a, action) for a in s.actions)
               and not any(_matches(n, action) for n in s.not_actions) for s in sets)


def missing(actions: Iterable[str], sets: Iterable[PermissionSet]) -> list[str]:
    """The ``actions`` that ``sets`` do not grant, in the order given."""
    granted = list(sets)
    return [action for action in actions if not allowed(action, granted)]

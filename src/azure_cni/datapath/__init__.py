"""The node's datapath: veth pairs, routes, sysctls and the egress chains, over netlink.

pyroute2's package ``__init__`` imports every one of its sockets and tools (NDB, IPDB, IPVS,
WireGuard, nl80211, plan9, ...: 160 modules, about 6 MB resident on every node) although the
agent uses ``IPRoute`` and the rtnl messages only. So the package is registered here without
running that ``__init__``: its submodules import as usual, and the first name asked of the
package itself (``from pyroute2 import X``, as tests and tools do) runs the full ``__init__``
then, so nothing that wants all of pyroute2 sees a difference.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


def _lean_pyroute2() -> None:
    spec = importlib.util.find_spec("pyroute2")
    if "pyroute2" in sys.modules or spec is None or spec.loader is None:
        return
    package = types.ModuleType("pyroute2")
    package.__spec__, package.__path__ = spec, list(spec.submodule_search_locations or ())
    package.__file__ = spec.origin
    loader = spec.loader

    def lookup(name: str) -> Any:
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            return importlib.import_module(f"pyroute2.{name}")  # a submodule: as usual
        del package.__getattr__
        loader.exec_module(package)  # pyroute2's own __init__, into this very module
        return getattr(package, name)

    package.__getattr__ = lookup  # type: ignore[method-assign]
    sys.modules["pyroute2"] = package


_lean_pyroute2()

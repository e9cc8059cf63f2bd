"""An import-linter contract type: the listed modules import the standard library only.

The CNI shim is copied onto every host as one file and run by the container runtime with the
host's python3, so it may import nothing but the standard library: not even the rest of the
azure_cni package. `make contracts` puts hack/ on PYTHONPATH so lint-imports finds this type.
"""

from __future__ import annotations

import sys
from typing import Any

from importlinter import Contract, ContractCheck, fields, output


class StdlibOnlyContract(Contract):
    type_name = "stdlib_only"

    modules = fields.ListField(subfield=fields.ModuleField())

    def check(self, graph: Any, verbose: bool) -> ContractCheck:
        offenders: dict[str, list[str]] = {}
        for module in self.modules:
            name = module.name
            for imported in sorted(graph.find_modules_directly_imported_by(name)):
                top = imported.split(".")[0]
                if top in sys.stdlib_module_names or top == "__future__":
                    continue
                offenders.setdefault(name, []).append(imported)
        return ContractCheck(kept=not offenders, metadata={"offenders": offenders})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for module, imports in check.metadata["offenders"].items():
            output.print_error(f"{module} imports modules outside the standard library:")
            for imported in imports:
                output.indent_cursor()
                output.print_error(f"- {imported}")
            output.new_line()

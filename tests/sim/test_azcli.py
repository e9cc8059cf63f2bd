"""The az stand-in's own parts: the subset of --query and -o the install guide uses."""

from __future__ import annotations

from azure_cni_sim.azcli import _options, query, render


def test_query_and_output() -> None:
    made = {"id": "/x/identity", "clientId": "c", "principalId": "p"}
    assert render(query(made, "principalId"), "tsv") == "p\n"
    assert render(query([{"name": "vm0"}, {"name": "flex1"}], "[].name"), "tsv") == \
        "vm0\nflex1\n"
    assert render(query(made, ""), "json").startswith("{")
    assert render(None, "tsv") == ""


def test_options_take_short_and_long_forms() -> None:
    assert _options(["vm", "identity", "assign", "--resource-group", "nodes", "-n", "vm0",
                     "--identities=/x"]) == {"-g": "nodes", "-n": "vm0", "--identities": "/x"}

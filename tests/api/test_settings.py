"""The configuration file: defaults defined once, bad keys named."""

from __future__ import annotations

import pytest

from azure_cni.api.settings import (
    InvalidSettings,
    Settings,
    load_settings,
    settings_from_mapping,
    settings_to_mapping,
)


def test_round_trip_of_defaults() -> None:
    assert settings_from_mapping(settings_to_mapping(Settings())) == Settings()


def test_missing_default_file_means_defaults(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("azure_cni.api.settings.DEFAULT_CONFIG_PATH", tmp_path / "absent.yaml")
    assert load_settings() == Settings()


def test_explicit_missing_file_is_an_error(tmp_path) -> None:
    with pytest.raises(InvalidSettings, match="does not exist"):
        load_settings(tmp_path / "absent.yaml")


def test_values_are_read(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("pool: {minIPs: 4, batchSize: 2}\nsnat: {nonMasqueradeCIDRs: [10.0.0.0/8]}\n"
                    "azure: {writeQPS: 0.5, copyLoadBalancerPools: true}\n")
    s = load_settings(path)
    assert s.pool.min_ips == 4 and s.pool.batch_size == 2
    assert s.snat.non_masquerade_cidrs == ("10.0.0.0/8",)
    assert s.azure.write_qps == 0.5 and s.azure.copy_load_balancer_pools is True


@pytest.mark.parametrize(("doc", "message"), [
    ("pools: {}", "unknown top-level keys pools"),
    ("agent: {sockPath: x}", "agent: unknown keys sockPath"),
    ("pool: {minIPs: lots}", "pool.minIPs: 'lots' is not valid"),
    ("snat: {enabled: 'yes'}", "snat.enabled: 'yes' is not valid: expected true or false"),
    ("snat: {nonMasqueradeCIDRs: [banana]}", "'banana' is not a CIDR"),
    ("azure: {credential: password}", "azure.credential: 'password' is not one of"),
    ("pool: {minIPs: 300}", "pool.minIPs \\(300\\) must not exceed pool.maxIPs \\(250\\)"),
    ("pool: [1, 2]", "pool must be a mapping"),
    ("pool: {mode: Prefixes}",
     "pool.mode: 'Prefixes' is not valid: expected one of Addresses, Blocks"),
    ("pool: {mode: Blocks, blockPrefixLength: 24}",
     "pool.blockPrefixLength \\(24\\) must be between 26 and 30"),
    ("pool: {", "not valid YAML"),
    ("podNetworking: {namespaceResourceGroups: [web]}", "must be a mapping of namespaces"),
    ("podNetworking: {namespaceResourceGroups: {web: rg}}", "web must be a list"),
    ("podNetworking: {publicIPNamespaces: [web]}", "neither podNetworking.resourceGroups"),
    ("agent: {extraPlugins: bandwidth}",
     "agent.extraPlugins: 'bandwidth' is not valid: expected a list"),
    ("agent: {extraPlugins: [{capabilities: {}}]}", "is not a plugin configuration with a type"),
    ("agent: {extraPlugins: [{type: ../../bin/sh}]}", "is not a plugin binary's name"),
    ("agent: {extraPlugins: [{type: portmap}]}", "portmap is chained already"),
    ("agent: {extraPlugins: [{type: tuning}, {type: tuning}]}", "tuning is chained already"),
])
def test_bad_configuration_names_the_key(tmp_path, doc, message) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(doc)
    with pytest.raises(InvalidSettings, match=message):
        load_settings(path)


def test_extra_plugins_round_trip(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("agent: {extraPlugins: [{type: bandwidth, capabilities: {bandwidth: true}}]}")
    s = load_settings(path)
    assert s.agent.extra_plugins == ({"type": "bandwidth", "capabilities": {"bandwidth": True}},)
    assert settings_from_mapping(settings_to_mapping(s)) == s


def test_the_chart_can_make_every_new_pool_a_blocks_pool(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("pool: {mode: Blocks, blockPrefixLength: 27}\n")
    spec = load_settings(path).pool.spec_for("n1")
    assert (spec.mode, spec.prefix_length, spec.unit) == ("Blocks", 27, 32)


def test_a_whole_resource_group_can_be_granted_to_one_namespace(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("podNetworking: {namespaceResourceGroups: {web: [web-ips]},"
                    " publicIPNamespaces: [web]}\n")
    networking = load_settings(path).pod_networking
    assert networking.groups_for("web") == ("web-ips",) and networking.groups_for("db") == ()
    assert networking.trusts("web", "WEB-IPS") and not networking.trusts("db", "web-ips")
    assert settings_from_mapping(settings_to_mapping(load_settings(path))) == load_settings(path)

"""The agent's validation of shim requests, and GC/prevResult interpretation."""

from __future__ import annotations

from typing import Any

import pytest

from azure_cni.api.attachment import AttachmentKey
from azure_cni.cni.errors import CniError, Code
from azure_cni.cni.request import parse_cni_args, parse_request


def body(**overrides: Any) -> dict[str, Any]:
    config = {"cniVersion": "1.0.0", "name": "azure-cni", "type": "azure-vnet"}
    config.update(overrides.pop("config", {}))
    base = {"protocol": 1, "command": "ADD", "containerID": "abc", "netns": "/run/netns/x",
            "ifname": "eth0", "args": "", "path": "", "config": config}
    base.update(overrides)
    return base


@pytest.mark.parametrize(("request_body", "code", "words"), [
    ([], Code.INVALID_CONFIG, "JSON object"),
    (body(protocol=2), Code.INCOMPATIBLE_VERSION, "protocol"),
    (body(command="UPDATE"), Code.INVALID_ENVIRONMENT, "CNI_COMMAND"),
    (body(config={"cniVersion": None}), Code.INVALID_CONFIG, "cniVersion"),
    (body(config={"cniVersion": "0.2.0"}), Code.INCOMPATIBLE_VERSION, "0.2.0"),
    (body(command="CHECK", config={"cniVersion": "0.3.1"}), Code.INCOMPATIBLE_VERSION, "0.4.0"),
    (body(command="GC", config={"cniVersion": "1.0.0"}), Code.INCOMPATIBLE_VERSION, "1.1.0"),
    (body(command="STATUS", config={"cniVersion": "0.4.0"}), Code.INCOMPATIBLE_VERSION,
     "1.1.0"),
    (body(config={"name": ""}), Code.INVALID_CONFIG, "name"),
    (body(containerID=""), Code.INVALID_ENVIRONMENT, "CNI_CONTAINERID"),
    (body(containerID="-bad"), Code.INVALID_ENVIRONMENT, "CNI_CONTAINERID"),
    (body(ifname="a/b"), Code.INVALID_ENVIRONMENT, "CNI_IFNAME"),
    (body(ifname="x" * 16), Code.INVALID_ENVIRONMENT, "CNI_IFNAME"),
    (body(netns=""), Code.INVALID_ENVIRONMENT, "CNI_NETNS"),
])
def test_bad_requests(request_body: Any, code: Code, words: str) -> None:
    with pytest.raises(CniError) as caught:
        parse_request(request_body)
    assert caught.value.code == code
    assert words in str(caught.value)


def test_del_without_netns_and_status_without_container_are_fine() -> None:
    assert parse_request(body(command="DEL", netns="")).netns == ""
    status = parse_request(body(command="STATUS", containerID="", ifname="", netns="",
                                config={"cniVersion": "1.1.0"}))
    assert status.command == "STATUS"


def test_cni_args_in_any_order() -> None:
    args = "K8S_POD_NAME=web;IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;bogus"
    assert parse_cni_args(args) == {"K8S_POD_NAME": "web", "IgnoreUnknown": "1",
                                    "K8S_POD_NAMESPACE": "shop"}
    assert parse_request(body(args=args)).pod == "shop/web"


PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "azvx"}, {"name": "eth0", "sandbox": "/run/netns/x"},
                       {"name": "net1", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "198.18.0.10/32", "interface": 1},
                {"address": "10.9.9.9/24", "interface": 2},
                {"address": "2001:db8::1/64", "interface": 1}]}


def test_prev_result_addresses_of_this_interface_only() -> None:
    req = parse_request(body(command="CHECK", config={"prevResult": PREV}))
    assert req.prev_result_addresses() == {"198.18.0.10"}
    assert parse_request(body(command="DEL")).prev_result_addresses() is None
    broken = parse_request(body(command="DEL", config={"prevResult": {"ips": [{"x": 1}]}}))
    with pytest.raises(CniError) as caught:
        broken.prev_result_addresses()
    assert caught.value.code == Code.INVALID_CONFIG


GC_ITEMS = [{"containerID": "keep", "ifname": "eth0"}]


@pytest.mark.parametrize(("config", "expected"), [
    ({"cni.dev/valid-attachments": GC_ITEMS}, {AttachmentKey("keep", "eth0")}),
    ({"cni.dev/attachments": GC_ITEMS}, {AttachmentKey("keep", "eth0")}),
    ({"cni.dev/valid-attachments": GC_ITEMS, "cni.dev/attachments": []},
     {AttachmentKey("keep", "eth0")}),
    ({"cni.dev/valid-attachments": None}, set()),  # an empty Go slice: nothing is valid
    ({"cni.dev/valid-attachments": []}, set()),
    ({}, None),  # cnitool gc: no list at all, so nothing may be freed on its account
])
def test_gc_valid_attachments(config: dict[str, Any], expected: Any) -> None:
    req = parse_request(body(command="GC", containerID="", ifname="", netns="",
                             config={"cniVersion": "1.1.0", **config}))
    assert req.valid_attachments() == expected


@pytest.mark.parametrize("bad", [{"containerID": "x"}, "x", 5])
def test_gc_malformed_entries(bad: Any) -> None:
    req = parse_request(body(command="GC", config={"cniVersion": "1.1.0",
                                                   "cni.dev/valid-attachments": [bad]}))
    with pytest.raises(CniError) as caught:
        req.valid_attachments()
    assert caught.value.code == Code.INVALID_CONFIG

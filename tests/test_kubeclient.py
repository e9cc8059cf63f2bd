"""Where a pod finds the API server: the address the kubelet gives it, not cluster DNS."""

from __future__ import annotations

from pathlib import Path

import pytest

from azure_cni.kubeclient import KubeConfigError, in_cluster, service_account_server


@pytest.mark.parametrize(("host", "server"), [
    ("198.18.240.1", "https://198.18.240.1:443"),
    ("fd00::1", "https://[fd00::1]:443"),
])
def test_the_api_server_is_the_address_the_kubelet_gives_every_pod(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str, server: str) -> None:
    (tmp_path / "token").write_text("t0\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert service_account_server(tmp_path) == (server, tmp_path / "token")


def test_outside_a_pod_there_is_no_service_account_and_the_error_says_what_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    (tmp_path / "token").write_text("t0")
    assert service_account_server(tmp_path) is None
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST/PORT or its token"):
        in_cluster(tmp_path)

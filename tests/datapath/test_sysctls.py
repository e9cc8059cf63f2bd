"""Host sysctls: written where the agent can write them."""

from __future__ import annotations

from azure_cni.datapath.sysctls import PROC_NET, ensure_host_sysctls, proc_sys_net


def test_sysctls_go_through_the_hosts_proc_mount_when_the_agent_has_one(tmp_path) -> None:
    assert proc_sys_net() == PROC_NET
    assert proc_sys_net(tmp_path) == PROC_NET, "no mount there: use our own /proc"
    mounted = tmp_path / "proc" / "sys" / "net"
    (mounted / "ipv4" / "conf" / "all").mkdir(parents=True)
    (mounted / "ipv4" / "ip_forward").write_text("0\n")
    (mounted / "ipv4" / "conf" / "all" / "forwarding").write_text("1\n")
    assert proc_sys_net(tmp_path) == mounted
    assert ensure_host_sysctls(mounted) == {"ipv4/ip_forward": "0"}
    assert (mounted / "ipv4" / "ip_forward").read_text() == "1\n"

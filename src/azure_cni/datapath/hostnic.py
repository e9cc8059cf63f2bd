"""The host's NIC as the datapath needs it: the MTU pods get (same as the NIC's)."""

from __future__ import annotations

from pyroute2.iproute.linux import IPRoute

from azure_cni.api.settings import AgentSettings


class HostInterfaceUnknown(RuntimeError):
    """The interface whose MTU pods should copy cannot be found."""


def resolve_mtu(agent: AgentSettings) -> tuple[int, str]:
    """(MTU, where it came from): agent.mtu, else agent.hostInterface's, else the NIC that
    holds the IPv4 default route."""
    if agent.mtu > 0:
        return agent.mtu, "agent.mtu"
    with IPRoute() as ipr:
        if agent.host_interface:
            links = [link for link in ipr.get_links()
                     if link.get("IFLA_IFNAME") == agent.host_interface]
            if not links:
                raise HostInterfaceUnknown(
                    f"agent.hostInterface {agent.host_interface!r} does not exist on this host")
            return int(links[0].get("IFLA_MTU")), f"interface {agent.host_interface}"
        for route in ipr.get_routes(family=2, table=254):
            if route.get("dst_len") == 0 and route.get("RTA_OIF"):
                link = ipr.get_links(int(route.get("RTA_OIF")))[0]
                return int(link.get("IFLA_MTU")), f"interface {link.get('IFLA_IFNAME')} " \
                                                  "(default route)"
    raise HostInterfaceUnknown("the host has no IPv4 default route; set agent.hostInterface "
                               "or agent.mtu")

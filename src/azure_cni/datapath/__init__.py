"""Node datapath in transparent mode: veth pairs, host routes, proxy ARP and the SNAT chain."""

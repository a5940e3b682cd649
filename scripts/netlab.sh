#!/bin/sh
# The paper's test network by hand, as vmm::net::lab::Lab builds it for the tests:
#   HostA 198.18.0.1/24 ==veth== 198.18.0.2/24 HostB 198.18.1.1/24 ==TAP kvmtap0== guest 198.18.1.2
# Namespaces `hosta` and `hostb` (or $NETLAB_A / $NETLAB_B); run tinyvmm inside HostB:
#   sudo scripts/netlab.sh up
#   sudo ip netns exec hostb tinyvmm run --net tap:kvmtap0 --workload net-echo --seconds 30
#   sudo ip netns exec hosta ping -c 100 -i 0.01 198.18.1.2
#   sudo scripts/netlab.sh down
# Addresses are from the benchmark range 198.18.0.0/15; nothing leaves the namespaces.
set -eu
A=${NETLAB_A:-hosta}
B=${NETLAB_B:-hostb}
TAP=${NETLAB_TAP:-kvmtap0}
case "${1:-}" in
up)
    ip netns add "$A"
    ip netns add "$B"
    for ns in "$A" "$B"; do
        ip netns exec "$ns" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
        ip -n "$ns" link set lo up
    done
    ip netns exec "$B" sysctl -q -w net.ipv4.ip_forward=1
    ip link add kvmva netns "$A" type veth peer name kvmvb netns "$B"
    ip -n "$A" addr add 198.18.0.1/24 dev kvmva
    ip -n "$A" link set kvmva up
    ip -n "$B" addr add 198.18.0.2/24 dev kvmvb
    ip -n "$B" link set kvmvb up
    ip -n "$B" tuntap add dev "$TAP" mode tap
    ip -n "$B" addr add 198.18.1.1/24 dev "$TAP"
    ip -n "$B" link set "$TAP" up
    ip -n "$A" route add 198.18.1.0/24 via 198.18.0.2
    # The guest's MAC (tinyvmm's NIC), so traffic to it needs no ARP.
    ip -n "$B" neigh replace 198.18.1.2 lladdr 52:54:00:12:34:56 dev "$TAP" nud permanent
    ;;
down)
    ip netns del "$A" || true
    ip netns del "$B" || true
    ;;
*)
    echo "usage: $0 up|down" >&2
    exit 1
    ;;
esac

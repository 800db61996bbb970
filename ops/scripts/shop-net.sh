#!/usr/bin/env bash
# A small shop network made of Linux network namespaces, for the local-link test across hosts.
#
#   ops/scripts/shop-net.sh up PREFIX     make it (needs root: ip netns, veth, bridge)
#   ops/scripts/shop-net.sh down PREFIX   remove it (only the namespaces named PREFIX-*)
#   ops/scripts/shop-net.sh check         exit 0 when namespaces can be made here, else say why
#
# The hosts, each a namespace with one interface eth0 on 192.168.77.0/24 (broadcast 192.168.77.255):
#   PREFIX-bank  .1   the bank: the whole WiPay system and the test process (its gateways are reached here)
#   PREFIX-till1 .11  Two Till Shop, till 1
#   PREFIX-till2 .12  Two Till Shop, till 2
#   PREFIX-next  .21  the neighbour's till (a mall's shared Wi-Fi)
#   PREFIX-phone .31  the shopper's phone
# and PREFIX-lan, which holds only the bridge br0 (the access point) that the five are plugged into.
# Nothing is added to the namespace this script is started from.
set -euo pipefail

prog="shop-net.sh"
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }

hosts=(bank:1 till1:11 till2:12 next:21 phone:31)

find_ip() {
    command -v ip 2>/dev/null || { [[ -x /usr/sbin/ip ]] && echo /usr/sbin/ip; } || { [[ -x /sbin/ip ]] && echo /sbin/ip; } || return 1
}

check() {
    local ip
    ip="$(find_ip)" || { echo "the ip command (iproute2) is not installed"; return 1; }
    [[ $(id -u) -eq 0 ]] || { echo "network namespaces need root"; return 1; }
    local probe="wipay-probe-$$"
    if ! "$ip" netns add "$probe" 2>/dev/null; then
        echo "ip netns add is refused here (no CAP_SYS_ADMIN, or no /run/netns)"
        return 1
    fi
    local ok=0
    "$ip" -n "$probe" link add br0 type bridge 2>/dev/null \
        && "$ip" -n "$probe" link add v0 type veth peer name v1 2>/dev/null || ok=1
    "$ip" netns del "$probe" 2>/dev/null || true
    [[ $ok -eq 0 ]] || { echo "bridges or veth pairs cannot be made here"; return 1; }
    return 0
}

up() {
    local prefix="$1" ip
    ip="$(find_ip)" || die "the ip command (iproute2) is not installed"
    [[ "$prefix" =~ ^[a-z0-9]{1,8}$ ]] || die "PREFIX must be 1-8 of [a-z0-9], not '$prefix'"
    local lan="$prefix-lan"
    "$ip" netns add "$lan"
    "$ip" -n "$lan" link set lo up
    "$ip" -n "$lan" link add br0 type bridge
    # Without an IGMP querier on this LAN, snooping would learn nothing useful: flood multicast like a
    # small access point does.
    "$ip" -n "$lan" link set br0 type bridge mcast_snooping 0
    "$ip" -n "$lan" link set br0 up
    local entry name octet ns
    for entry in "${hosts[@]}"; do
        name="${entry%%:*}"
        octet="${entry##*:}"
        ns="$prefix-$name"
        "$ip" netns add "$ns"
        "$ip" -n "$ns" link set lo up
        "$ip" -n "$lan" link add "p-$name" type veth peer name eth0 netns "$ns"
        "$ip" -n "$lan" link set "p-$name" master br0 up
        "$ip" -n "$ns" addr add "192.168.77.$octet/24" brd + dev eth0
        "$ip" -n "$ns" link set eth0 up
    done
    # Wait until each host's interface is up (a veth is ready at once, but the bridge port takes a moment).
    local tries
    for entry in "${hosts[@]}"; do
        name="${entry%%:*}"
        for ((tries = 0; tries < 50; tries++)); do
            if "$ip" -n "$prefix-$name" -br link show eth0 2>/dev/null | grep -q "UP"; then break; fi
            sleep 0.1
        done
    done
    printf '%s: made the shop network %s-{lan,bank,till1,till2,next,phone} (192.168.77.0/24)\n' "$prog" "$prefix"
}

down() {
    local prefix="$1" ip
    ip="$(find_ip)" || die "the ip command (iproute2) is not installed"
    [[ "$prefix" =~ ^[a-z0-9]{1,8}$ ]] || die "PREFIX must be 1-8 of [a-z0-9], not '$prefix'"
    local entry
    for entry in "${hosts[@]}" lan:0; do
        "$ip" netns del "$prefix-${entry%%:*}" 2>/dev/null || true
    done
}

case "${1:-}" in
    up) [[ $# -eq 2 ]] || die "usage: $prog up PREFIX"; up "$2" ;;
    down) [[ $# -eq 2 ]] || die "usage: $prog down PREFIX"; down "$2" ;;
    check) check ;;
    *) die "usage: $prog up PREFIX | down PREFIX | check" ;;
esac

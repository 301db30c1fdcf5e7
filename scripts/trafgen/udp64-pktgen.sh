#!/usr/bin/env bash
# The cluster flood of cluster-udp64.trafgen with the kernel's pktgen, for
# labs whose kernel has it (CONFIG_NET_PKTGEN; this project's VMs lack it).
#
#   scripts/trafgen/udp64-pktgen.sh DEV [THREADS] [SECONDS] [VIP] [CLUSTER_MAC]
#
# One pktgen thread per CPU 0..THREADS-1, each on its own tx queue
# (QUEUE_MAP), 64-byte frames (60 + FCS) of UDP from 10.1.0.0/16 (random
# source address, port 40000) to VIP:7001 at CLUSTER_MAC, as fast as the
# NIC takes them. Prints the frames each thread sent. Run as root on the
# generator host; point DEV at the port facing the cluster's segment.
set -euo pipefail
dev=${1:?usage: udp64-pktgen.sh DEV [THREADS] [SECONDS] [VIP] [CLUSTER_MAC]}
threads=${2:-1}
seconds=${3:-10}
vip=${4:-10.0.0.100}
mac=${5:-03:bf:0a:00:00:64}

modprobe pktgen 2>/dev/null || true
[ -d /proc/net/pktgen ] || { echo "pktgen: this kernel has no pktgen (CONFIG_NET_PKTGEN)" >&2; exit 1; }

pg() { # pg FILE COMMAND: pktgen reports a refused command by a write error
    echo "$2" > "$1" || { echo "pktgen: '$2' refused by $1" >&2; exit 1; }
}

pg /proc/net/pktgen/pgctrl reset
for ((t = 0; t < threads; t++)); do
    kt=/proc/net/pktgen/kpktgend_$t
    name="$dev@$t"
    pg "$kt" rem_device_all
    pg "$kt" "add_device $name"
    d=/proc/net/pktgen/$name
    pg "$d" "count 0"
    pg "$d" "clone_skb 0"
    pg "$d" "pkt_size 60"
    pg "$d" "delay 0"
    pg "$d" "queue_map_min $t"
    pg "$d" "queue_map_max $t"
    pg "$d" "dst $vip"
    pg "$d" "dst_mac $mac"
    pg "$d" "src_min 10.1.0.0"
    pg "$d" "src_max 10.1.255.255"
    pg "$d" "flag IPSRC_RND"
    pg "$d" "udp_src_min 40000"
    pg "$d" "udp_src_max 40000"
    pg "$d" "udp_dst_min 7001"
    pg "$d" "udp_dst_max 7001"
done
pg /proc/net/pktgen/pgctrl start &
ctl=$!
sleep "$seconds"
echo stop > /proc/net/pktgen/pgctrl
wait "$ctl" 2>/dev/null || true
for ((t = 0; t < threads; t++)); do
    printf '%s@%s: ' "$dev" "$t"
    grep -o 'pkts-sofar: [0-9]*' "/proc/net/pktgen/$dev@$t" || echo "no result"
done

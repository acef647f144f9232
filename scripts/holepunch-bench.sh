#!/usr/bin/env bash
# Hole-punching benchmark across real NATs on this machine (root, iproute2, iptables):
#   pub (198.51.100.1, relay) ── natN (MASQUERADE, drops unsolicited SYNs) ── privN (10.0.N.2)
# Node A (priv0) serves echo and reserves on the relay; N times a fresh node in priv1 (a new
# identity each time) dials A's circuit address and DCUtR tries to make it direct. Prints the
# success rate and the time from the relayed connection to the direct one (A's side: from the
# DCUtR stream to the direct connection). Usage: scripts/holepunch-bench.sh [attempts] [mapping]
# (mapping: eim = endpoint-independent, default; symmetric; public = the dialing nodes run on the
# public bridge, so A dials them directly without a hole punch). Everything is removed at the end.
set -euo pipefail
attempts=${1:-50}
mapping=${2:-eim}
cd "$(dirname "$0")/.."
bin=.build/release/pointsub
[ -x "$bin" ] || swift build -c release --product pointsub >/dev/null
tag="hpb$$"
pub="${tag}pub"
cleanup() { for ns in "$pub" "${tag}nat0" "${tag}nat1" "${tag}priv0" "${tag}priv1"; do ip netns del "$ns" 2>/dev/null || true; done; }
trap 'kill $(jobs -p) 2>/dev/null || true; cleanup' EXIT
ip netns add "$pub"
ip -n "$pub" link set lo up
ip -n "$pub" link add br0 type bridge
ip -n "$pub" addr add 198.51.100.1/24 dev br0
ip -n "$pub" link set br0 up
for i in 0 1; do
    nat="${tag}nat$i"; host="${tag}priv$i"
    ip netns add "$nat"; ip netns add "$host"
    ip -n "$nat" link set lo up; ip -n "$host" link set lo up
    ip link add "${pub}p$i" netns "$pub" type veth peer name wan netns "$nat"
    ip -n "$pub" link set "${pub}p$i" master br0; ip -n "$pub" link set "${pub}p$i" up
    ip -n "$nat" addr add "198.51.100.$((i + 2))/24" dev wan; ip -n "$nat" link set wan up
    ip link add lan netns "$nat" type veth peer name eth0 netns "$host"
    ip -n "$nat" addr add "10.0.$((i + 1)).1/24" dev lan; ip -n "$nat" link set lan up
    ip -n "$host" addr add "10.0.$((i + 1)).2/24" dev eth0; ip -n "$host" link set eth0 up
    ip -n "$host" route add default via "10.0.$((i + 1)).1"
    ip netns exec "$nat" sysctl -qw net.ipv4.ip_forward=1
    ip netns exec "$nat" iptables -A INPUT -i wan -p tcp --syn -j DROP
    extra=(); [ "$mapping" = symmetric ] && extra=(--random-fully)
    ip netns exec "$nat" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE "${extra[@]}"
done
out=$(mktemp -d)
ip netns exec "$pub" "$bin" relay --seed 61 --listen /ip4/198.51.100.1/tcp/4001 --no-mdns --no-autonat >"$out/relay" 2>&1 &
for _ in $(seq 100); do grep -q /p2p/ "$out/relay" && break; sleep 0.1; done
relay=$(grep -m1 /p2p/ "$out/relay")
ip netns exec "${tag}priv0" "$bin" echo --seed 62 --listen /ip4/0.0.0.0/tcp/4001 --relay "$relay" --no-mdns --no-autonat >"$out/a" 2>"$out/a.err" &
for _ in $(seq 100); do grep -q p2p-circuit "$out/a" && break; sleep 0.1; done
circuit=$(grep -m1 p2p-circuit "$out/a")
echo "hole punching, $attempts attempts, NAT mapping: $mapping; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
direct=0
dialer="${tag}priv1"; success="direct via hole punching"
[ "$mapping" = public ] && { dialer="$pub"; success="direct (the peer dialed our public address)"; }
for n in $(seq "$attempts"); do
    err=$(ip netns exec "$dialer" timeout 60 "$bin" ping "$circuit" --count 1 --seed $((1000 + n)) 2>&1 >/dev/null || true)
    if grep -qF "$success" <<<"$err"; then direct=$((direct + 1)); else [ -n "${HPB_VERBOSE:-}" ] && echo "attempt $n: $err" >&2; fi
done
# A's side logs each outcome: "hole punching with <peer>: direct after N ms (k attempts)".
grep -o "direct after [0-9]* ms" "$out/a.err" | awk '{print $3}' | sort -n >"$out/ms" || true
count=$(wc -l <"$out/ms")
p() { [ "$count" -gt 0 ] && sed -n "$(( (count * $1 + 99) / 100 ))p" "$out/ms" || echo "-"; }
echo "direct: $direct of $attempts ($((100 * direct / attempts)) %)"
echo "time from the relayed connection to the direct one (A's side), ms: p50 $(p 50), p90 $(p 90), max $(tail -1 "$out/ms" 2>/dev/null || echo -)"
echo "first attempt succeeded: $(grep -c "direct after [0-9]* ms (1 attempt)" "$out/a.err" || true) of $count"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$out"

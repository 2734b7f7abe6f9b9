#!/usr/bin/env bash
# tether demo: three real Socket.IO nodes behind tether, 200 long-polling
# clients from 64 addresses, then a fourth node added and one drained, all
# shown live. Everything lives in network namespaces named tdemo-* and is
# torn down at the end, also on Ctrl-C. Run as root: make demo.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TETHER=$ROOT/bin/tether
NODE_DIR=$ROOT/test/e2e/node
P=tdemo
VIP=198.18.1.1
PORT=3000
WORK=$(mktemp -d /tmp/tether-demo.XXXXXX)
BPFFS=$WORK/bpffs
SOCK=$WORK/tether.sock
METRICS=127.0.0.1:9180
NODES=(node1 node2 node3 node4)
PIDS=()

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
tether() { "$TETHER" --socket "$SOCK" "$@"; }
in_ns() { local ns=$1; shift; ip netns exec "$P-$ns" "$@"; }

cleanup() {
  set +e
  trap - EXIT INT TERM
  bold "tearing down"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  "$TETHER" detach --socket "$SOCK" --iface eth0 --bpffs "$BPFFS" >/dev/null 2>&1
  umount "$BPFFS" 2>/dev/null
  for ns in sw lb cl "${NODES[@]}"; do ip netns del "$P-$ns" 2>/dev/null; done
  rm -rf "$WORK"
  echo "done: no namespace, program or pin left behind"
}
trap cleanup EXIT INT TERM

[ "$(id -u)" = 0 ] || { echo "make demo needs root (network namespaces, XDP)"; exit 1; }

bold "building the test network: a switch, the load balancer, 4 node hosts, 1 client host with 64 addresses"
for ns in sw lb cl "${NODES[@]}"; do ip netns del "$P-$ns" 2>/dev/null || true; ip netns add "$P-$ns"; done
ip -n $P-sw link add br0 type bridge
ip -n $P-sw link set br0 up
host=2
for ns in lb "${NODES[@]}" cl; do
  [ "$ns" = cl ] && host=10
  ip link add "$P-$ns" netns $P-sw type veth peer name eth0 netns "$P-$ns"
  ip -n $P-sw link set "$P-$ns" master br0 up
  ip -n "$P-$ns" link set lo up
  ip -n "$P-$ns" addr add 198.18.0.$host/24 dev eth0
  ip -n "$P-$ns" link set eth0 up
  host=$((host + 1))
done
CLIENTS=()
for i in $(seq 10 73); do
  CLIENTS+=(198.18.0.$i)
  [ "$i" = 10 ] || ip -n $P-cl addr add 198.18.0.$i/24 dev eth0
done
FRESH=()
for i in $(seq 74 89); do FRESH+=(198.18.0.$i); ip -n $P-cl addr add 198.18.0.$i/24 dev eth0; done
LATE=()
for i in $(seq 90 105); do LATE+=(198.18.0.$i); ip -n $P-cl addr add 198.18.0.$i/24 dev eth0; done
ip -n $P-cl route add $VIP/32 via 198.18.0.2
in_ns cl ethtool -K eth0 tx off >/dev/null
# A veth delivers frames the LB sends back with XDP_TX only if the peer runs
# an XDP program too: give the switch-side port one that passes everything.
printf '%s\n' '__attribute__((section("xdp"), used)) int pass(void *ctx) { return 2; }' \
  'char pass_license[] __attribute__((section("license"), used)) = "GPL";' |
  clang -O2 -target bpf -c -x c - -o "$WORK/pass.o"
ip -n $P-sw link set dev $P-lb xdp obj "$WORK/pass.o" sec xdp
for n in "${NODES[@]}"; do
  ip -n "$P-$n" addr add $VIP/32 dev lo
  in_ns "$n" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
done

bold "starting four Socket.IO 4 nodes (npm socket.io); node4 is not behind tether yet"
for n in "${NODES[@]}"; do
  (cd "$NODE_DIR" && NODE_NAME=$n PORT=$PORT TRANSPORTS=polling exec ip netns exec "$P-$n" node server.js >/dev/null) &
  PIDS+=($!)
done
sleep 1

bold "starting tether on the load balancer's eth0, with an Engine.IO health check"
mkdir -p "$BPFFS" && mount -t bpf bpf "$BPFFS"
nsenter --net=/run/netns/$P-lb "$TETHER" --socket "$SOCK" run --iface eth0 --bpffs "$BPFFS" \
  --state-dir "$WORK/state" --metrics-addr $METRICS >"$WORK/tether.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do tether status >/dev/null 2>&1 && break; sleep 0.1; done
tether vip add $VIP:$PORT --affinity-timeout 10s --check engineio --check-interval 1s --check-timeout 500ms --check-rise 1 --check-fall 2
for i in 1 2 3; do tether backend add --vip $VIP:$PORT node$i 198.18.0.$((2 + i)); done
tether status

metrics() {
  in_ns lb node -e '
    require("http").get("http://'$METRICS'/metrics", (res) => {
      let body = ""; res.on("data", (d) => body += d);
      res.on("end", () => console.log(body.split("\n").filter((l) => /^tether_(packets_total\{outcome="(forwarded_tx|passed_not_vip)"|affinity_(events_total\{event="(hit|miss|insert)"|entries))/.test(l)).join("\n")));
    });'
}

# totals LOG: one line of client totals.
totals() {
  tail -n 1 "$1" | node -e '
    const t = JSON.parse(require("fs").readFileSync(0, "utf8"));
    console.log(`  clients ${t.clients}  connected ${t.connected}  acks ${t.acks}  errors ${t.ackTimeouts + t.connectErrors + t.disconnects}  moved ${t.moved}  per node ${JSON.stringify(t.perNode)}`);'
}

# grid LOG: the node each client address is on (.host -> node).
grid() {
  tail -n 1 "$1" | node -e '
    const t = JSON.parse(require("fs").readFileSync(0, "utf8"));
    const cells = Object.entries(t.byAddr).map(([a, n]) => `.${a.split(".")[3]}->${n.replace("node", "n")}`);
    for (let i = 0; i < cells.length; i += 16) console.log("  " + cells.slice(i, i + 16).join(" "));'
}

# watch_for SECONDS LOG...: totals of each client group every 5 s.
watch_for() {
  local seconds=$1; shift
  for _ in $(seq $((seconds / 5))); do
    sleep 5
    for log in "$@"; do totals "$log"; done
  done
}

clients() {
  local log=$1 count=$2 duration=$3; shift 3
  (cd "$NODE_DIR" && exec ip netns exec $P-cl node client.js --url http://$VIP:$PORT \
    --addrs "$(IFS=,; echo "$*")" --clients "$count" --duration "$duration" >"$log") &
  PIDS+=($!)
}

bold "200 clients from 64 addresses, forced to HTTP long-polling, a new TCP connection per request, an echo every 500 ms"
clients "$WORK/steady.log" 200 110 "${CLIENTS[@]}"
STEADY=${PIDS[-1]}
watch_for 15 "$WORK/steady.log"
echo "which node each client address is on:"
grid "$WORK/steady.log"
echo "the datapath's view: clients pinned per node, and counters from /metrics"
tether backend list
metrics

bold "adding node4 while the clients run: pinned clients stay put, new addresses can land on node4"
tether backend add --vip $VIP:$PORT node4 198.18.0.6
clients "$WORK/fresh.log" 32 15 "${FRESH[@]}"
watch_for 15 "$WORK/steady.log" "$WORK/fresh.log"
echo "new client addresses after the add:"
grid "$WORK/fresh.log"
echo "(moved 0 and errors 0 for the first 200 clients: adding a node broke no session)"

bold "draining node2: no new clients for it; its pinned clients stay until they leave"
tether backend drain --vip $VIP:$PORT node2
clients "$WORK/late.log" 32 30 "${LATE[@]}"
watch_for 10 "$WORK/steady.log" "$WORK/late.log"
tether backend list
echo "the first 200 clients now leave; node2 empties once its clients are idle for the affinity timeout (10 s here)"
kill -TERM "$STEADY"
wait "$STEADY" 2>/dev/null || true
totals "$WORK/steady.log"
time tether backend drain --vip $VIP:$PORT node2 --wait --timeout 60s
tether backend list
tether stats
metrics

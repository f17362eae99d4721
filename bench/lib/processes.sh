# Shell helpers of the GPU benchmark scripts (sourced; they set BEGAN and append to PIDS):
#   say MESSAGE             a line with the seconds since BEGAN
#   stop_all                TERM, then KILL after 20 s, every pid in PIDS (our own children)
#   wait_http URL SECONDS   until URL answers 2xx
#   wait_serving TARGETS S  until each comma-separated gRPC target's health says SERVING
PIDS=()

say() { echo "[bench +$(($(date +%s) - BEGAN))s] $*"; }

stop_all() {
  # Our own children only, by pid: TERM, then KILL whatever is left after 20 s.
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 1 40); do
    alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.5
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  PIDS=()
}

wait_http() {  # url timeout_s
  local deadline=$(($(date +%s) + $2))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    curl -sf -o /dev/null "$1" && return 0
    sleep 1
  done
  return 1
}

wait_serving() {  # comma-separated gRPC targets, timeout_s: each one's health says SERVING
  python3 - "$1" "$2" <<'PY'
import sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
deadline = time.monotonic() + float(sys.argv[2])
for target in sys.argv[1].split(","):
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
    while True:
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"{target} is not SERVING")
        time.sleep(1)
PY
}


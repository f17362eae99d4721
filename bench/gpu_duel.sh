#!/bin/bash
# Issue #20's GPU table, measured so that the noise between server starts drops out: `vllm serve`
# and the Parlance generator run at the same time on one GPU (each with GPU_MEM of it), and the
# arms take turns in rounds, so every ratio compares arms measured a minute apart on servers that
# stay up (bench/gpu_probe.sh starts one server after the other; two starts of one generator
# there differed by 14% at c=64, more than the effects looked for). One call, <= ~9 min:
#   c=1   bench/ttft_c1.py, one request per side in turn (serve, grpc, gw, gw+mod, and
#         gw+mod-lead10: output moderation with the lead window at 10 ms, the default before
#         the first duel), REQ1 rounds;
#         added time against serve per round
#   c=64, c=256  ROUNDS rounds of serve, grpc, gw, gw+mod (bench/gpu_probe.py's closed-loop
#         client, REQ64 / REQ256 requests of 128 tokens, ignore_eos), the order rotating each
#         round; ratios to serve's arm of the same round (bench/gpu_duel.py summarize)
# Around every c>1 arm, a snapshot of every thread's CPU time of serve, the generator, safety and
# the gateways (bench/gpu_duel.py snap): a front end whose busiest thread sits near one core
# is that server's limit.
#
# On the GPU machine, from the project root, after the kit (../shared/gpu/README.md, staged with
# `prepare.sh services/generator/requirements-gpu.txt bench/gpu-requirements.txt`):
#   source /tmp/stage/env.sh && REDIS_SERVER=.gpu/redis/redis-server bash bench/gpu_duel.sh
# Environment: GEN_VARIANT (fixed; any of bench/lib/gpu_servers.sh's variant_env, e.g. si4),
# GW ("off on lead10"; lead0, lead10 and noprecheck: gateways for the c=1 run only), ROUNDS (3), REQ1
# (40), MAXTOK1 (32), REQ64 (384), REQ256 (768; 0 skips c=256), PROCS (8), GPU_MEM (0.4
# each), PROBE_SAFETY (profanity), BUDGET_S (520: no arm starts after it), RESULT_DIR ($OUT/gpu_duel or bench/results/raw/gpu_duel).
# DRY_RUN=1: no GPU: the scripted engine, and the `gw` gateway stands in for `vllm serve`
# (checks the script, the client and the summary here).
# Output: $RESULT_DIR/gpu_duel.md, load_*.json, snap_*.json, ttft_c1.md, engine_configs.txt, logs/.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY_RUN="${DRY_RUN:-}"
if [ -z "$DRY_RUN" ]; then : "${SMOLLM2_HF_DIR:?source /tmp/stage/env.sh first}"; fi
MODEL="${SMOLLM2_HF_DIR:-SmolLM2-135M-Instruct}"
RESULT_DIR="${RESULT_DIR:-${OUT:+$OUT/gpu_duel}}"
RESULT_DIR="${RESULT_DIR:-bench/results/raw/gpu_duel}"
GEN_VARIANT="${GEN_VARIANT:-fixed}"
GW="${GW-off on lead10}"
ROUNDS="${ROUNDS:-3}"
REQ1="${REQ1:-40}"
MAXTOK1="${MAXTOK1:-32}"
REQ64="${REQ64:-384}"
REQ256="${REQ256:-768}"
PROCS="${PROCS:-8}"
GPU_MEM="${GPU_MEM:-0.4}"
PROBE_SAFETY="${PROBE_SAFETY:-profanity}"
BUDGET_S="${BUDGET_S:-520}"
if [ -n "$DRY_RUN" ]; then
  REQ1=4; MAXTOK1=8; REQ64=16; REQ256=32; PROCS=2; ROUNDS=2; GATEWAY_WORKERS=1
fi
LOGS="$RESULT_DIR/logs"
rm -rf "$RESULT_DIR"
mkdir -p "$RESULT_DIR" "$LOGS"
VLLM_PORT=8100
GEN_PORT=50051
SAFETY_PORT=50052
REDIS_PORT=6390
API_KEY="duel-$(date +%s)"
BEGAN=$(date +%s)
ORDER=0
# say, stop_all, wait_http, wait_serving:
source "$ROOT/bench/lib/processes.sh"
# start_gateways, start_generator, variant_env, gw_label, engine_config, begin_results:
source "$ROOT/bench/lib/gpu_servers.sh"
export PYTHONPATH="$ROOT/services/common/src:$ROOT/services/generator/src:$ROOT/services/safety/src:$ROOT/services/gateway/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
GATEWAY_PIDS=()
GENERATOR_PIDS=()
SERVE_PID=
cleanup() { PIDS+=("${GATEWAY_PIDS[@]}" "${GENERATOR_PIDS[@]}" $SERVE_PID); stop_all; }
trap cleanup EXIT
elapsed() { echo $(($(date +%s) - BEGAN)); }

declare -A URL=()  # arm -> target
snap() {  # file
  local pids=(--pid "generator=${GENERATOR_PIDS[0]}" --pid "safety=$SAFETY_PID") mod
  [ -n "$SERVE_PID" ] && pids+=(--pid "serve=$SERVE_PID")
  for mod in "${!GW_PID[@]}"; do pids+=(--pid "$(gw_label "$mod")=${GW_PID[$mod]}"); done
  "$PY" bench/gpu_duel.py snap "${pids[@]}" --out "$1" 2>> "$LOGS/client.txt"
}

load() {  # round arm c requests
  local round=$1 arm=$2 c=$3 n=$4 key=$API_KEY file
  [ "$arm" = serve ] && [ -z "$DRY_RUN" ] && key=""
  ORDER=$((ORDER + 1))
  file=$(printf %02d $ORDER)
  snap "$RESULT_DIR/snap_${file}_a.json"
  timeout 200 "$PY" bench/gpu_probe.py load --target "${URL[$arm]}" --model "$MODEL" \
    --api-key "$key" --label "$arm" --order "$ORDER" --round "$round" --concurrency "$c" \
    --requests "$n" --max-tokens 128 --procs "$PROCS" --prompts "$RESULT_DIR/prompts.json" \
    --out "$RESULT_DIR/load_${file}_${arm//[^a-zA-Z0-9]/_}_c$c.json" \
    2>> "$LOGS/client.txt" || say "load $arm c=$c failed (rc $?): see logs/client.txt"
  snap "$RESULT_DIR/snap_${file}_b.json"
  "$PY" bench/gpu_duel.py summarize --dir "$RESULT_DIR" --out "$RESULT_DIR/gpu_duel.md" \
    > /dev/null 2>> "$LOGS/client.txt"
}

begin_results "dry run (no GPU): scripted engine, gw as serve"

# -- the servers: serve first, then the generator (not at once: vLLM sizes its KV cache from the
# memory it sees free while it profiles, which another engine starting beside it would move).
start_gateways
if [ -z "$DRY_RUN" ]; then
  vllm serve "$MODEL" --max-model-len 2048 --gpu-memory-utilization "$GPU_MEM" \
    --host 127.0.0.1 --port $VLLM_PORT > "$LOGS/vllm_serve.txt" 2>&1 &
  SERVE_PID=$!
  wait_http "http://127.0.0.1:$VLLM_PORT/health" 200 || { say "serve not ready"; tail -30 "$LOGS/vllm_serve.txt"; exit 1; }
  say "(serve) ready"
  URL[serve]="http://127.0.0.1:$VLLM_PORT"
fi
start_generator "$GEN_VARIANT" || exit 1
wait_serving "127.0.0.1:$GEN_PORT" 200 || { say "generator not serving"; tail -30 "$LOGS/generator_$GEN_VARIANT.txt"; exit 1; }
say "($GEN_VARIANT) generator serving"
URL[grpc]="grpc://127.0.0.1:$GEN_PORT"
port=8000
http=()
for mod in $GW; do
  label=$(gw_label "$mod")
  wait_http "http://127.0.0.1:$port/readyz" 60 || say "gateway $label on $port not ready"
  URL[$label]="http://127.0.0.1:$port"
  http+=(--http "$label=http://127.0.0.1:$port")
  port=$((port + 1))
done
[ -n "$DRY_RUN" ] && URL[serve]=${URL[gw]}
[ -z "$DRY_RUN" ] && engine_config "vllm serve" "$LOGS/vllm_serve.txt"
engine_config "$GEN_VARIANT" "$LOGS/generator_$GEN_VARIANT.txt"

# -- c=1 first: each side one request in turn, added time against serve per round ---------------
timeout 150 "$PY" bench/ttft_c1.py --http "serve=${URL[serve]}" --grpc "127.0.0.1:$GEN_PORT" \
  "${http[@]}" --reference serve --api-key "$API_KEY" --model "$MODEL" \
  --prompts "$RESULT_DIR/prompts.json" --requests "$REQ1" --warmup 3 --max-tokens "$MAXTOK1" \
  --out "$RESULT_DIR/ttft_c1.md" --raw "$RESULT_DIR/ttft_c1.json" \
  > "$LOGS/ttft_c1.txt" 2>&1 || say "ttft_c1 failed: see logs/ttft_c1.txt"
say "c=1: $(grep -E '^\| (serve|grpc|gw[^ ]*) \|' "$RESULT_DIR/ttft_c1.md" 2>/dev/null | tr -s ' ' | tr '\n' ';')"

# -- c=64 and c=256 in rounds, the arms' order rotating ---------------------------------------
arms=(serve grpc)
for mod in $GW; do [[ "$mod" = lead* || "$mod" = noprecheck ]] || arms+=("$(gw_label "$mod")"); done
for round in $(seq 1 "$ROUNDS"); do
  for c in 64 256; do
    n=$REQ64; [ "$c" = 256 ] && n=$REQ256
    [ "$n" -gt 0 ] || continue
    shift_by=$(( (round - 1) % ${#arms[@]} ))
    turn=("${arms[@]:$shift_by}" "${arms[@]:0:$shift_by}")
    for arm in "${turn[@]}"; do
      if [ "$(elapsed)" -gt "$BUDGET_S" ]; then say "budget reached: round $round c=$c $arm not run"; break 3; fi
      load "$round" "$arm" "$c" "$n"
    done
  done
  say "round $round done"
done

uptime > "$RESULT_DIR/uptime_end.txt"
"$PY" bench/gpu_duel.py summarize --dir "$RESULT_DIR" --out "$RESULT_DIR/gpu_duel.md"
say "done in $(elapsed) s"

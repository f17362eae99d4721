#!/bin/bash
# `vllm serve` directly (a) against the whole Parlance path (b), same model, same GPU, one call.
#
# On the GPU machine, from the project root, after the kit's install.sh (../shared/gpu/README.md;
# stage it with `prepare.sh bench/gpu-requirements.txt`: bench/ttft_probe.py reads SSE with
# httpx-sse, which the image lacks):
#   source /tmp/stage/env.sh && REDIS_SERVER=.gpu/redis/redis-server bash bench/vllm_vs_parlance.sh
#
# (a) vllm serve $SMOLLM2_HF_DIR --max-model-len 2048 --gpu-memory-utilization 0.5
# (b) gateway (Redis limits on, set high enough never to bind: RPM, TPM, per-key leases; input moderation on, history off) -> safety (profanity)
#     -> generator (GENERATOR_ENGINE=vllm, same model and engine settings)
# Both measured with `vllm bench serve --backend openai-chat --dataset-name random
# --random-input-len 256 --random-output-len 128 --ignore-eos --seed 0` at max concurrency
# 1 (50 prompts), 64 (1000) and 256 (1000). Raw results: $RESULT_DIR/{a,b}_c<C>.json; the table
# of (b)/(a) ratios: $RESULT_DIR/vllm_vs_parlance.md (copy it to bench/results/).
# Environment: RESULT_DIR (default $OUT/vllm_vs_parlance if $OUT is set, else
# bench/results/raw), REDIS_SERVER (redis-server binary; see bench/fetch_redis.sh), RUNS
# ("1:50 64:1000 256:1000"), PHASES ("a b"), GPUS (1): with GPUS=N, (a) is `vllm serve
# --data-parallel-size N` and (b) runs N generator replicas, one per GPU, behind the one gateway
# (GATEWAY_GENERATOR_URL lists them all; the gateway spreads calls by least in flight);
# SPLIT_CLIENT (unset): also run the highest concurrency of RUNS as two clients of half the
# concurrency and prompts each, to show whether one `vllm bench serve` is the limit.
# PROBE=0 skips the TTFT probes. bench/summarize_scaleout.py compares a GPUS=1 and a GPUS=2 result folder.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${SMOLLM2_HF_DIR:?source /tmp/stage/env.sh first}"
MODEL="$SMOLLM2_HF_DIR"
RESULT_DIR="${RESULT_DIR:-${OUT:+$OUT/vllm_vs_parlance}}"
RESULT_DIR="${RESULT_DIR:-bench/results/raw}"
RUNS="${RUNS:-1:50 64:1000 256:1000}"
PHASES="${PHASES:-a b}"
GPUS="${GPUS:-1}"
LOGS="$RESULT_DIR/logs"
mkdir -p "$RESULT_DIR" "$LOGS"
VLLM_PORT=8100
GATEWAY_PORT=8000
GEN_PORT=50051
SAFETY_PORT=50052
REDIS_PORT=6390
API_KEY="bench-$(date +%s)"
BEGAN=$(date +%s)
# say, stop_all (kills PIDS), wait_http, wait_serving:
source "$ROOT/bench/lib/processes.sh"
trap stop_all EXIT

bench() {  # phase base_url
  local phase=$1 base=$2
  for run in $RUNS; do
    local c=${run%%:*} p=${run##*:}
    say "($phase) vllm bench serve: concurrency $c, $p prompts"
    timeout 150 vllm bench serve --backend openai-chat --base-url "$base" \
      --endpoint /v1/chat/completions --model "$MODEL" --tokenizer "$MODEL" \
      --dataset-name random --random-input-len 256 --random-output-len 128 --ignore-eos \
      --seed 0 --max-concurrency "$c" --num-prompts "$p" \
      --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99 \
      --save-result --result-dir "$RESULT_DIR" --result-filename "${phase}_c${c}.json" \
      --disable-tqdm > "$LOGS/bench_${phase}_c${c}.txt" 2>&1
    local rc=$?
    grep -E "Successful requests|Failed requests|Output token throughput|Median TTFT|P99 TTFT|Median TPOT|P99 TPOT" \
      "$LOGS/bench_${phase}_c${c}.txt" | sed 's/^/    /'
    [ $rc = 0 ] || { say "($phase) bench at concurrency $c failed (rc $rc):"; tail -20 "$LOGS/bench_${phase}_c${c}.txt"; }
  done
}

split_client() {  # phase base_url: the top concurrency of RUNS as two clients at once
  [ -n "${SPLIT_CLIENT:-}" ] || return 0
  local phase=$1 base=$2 top=${RUNS##* } half c p
  c=${top%%:*}; p=${top##*:}; half=$((c / 2))
  say "($phase) client check: two clients at concurrency $half, $((p / 2)) prompts each"
  local clients=()
  for k in 1 2; do
    timeout 150 vllm bench serve --backend openai-chat --base-url "$base" \
      --endpoint /v1/chat/completions --model "$MODEL" --tokenizer "$MODEL" \
      --dataset-name random --random-input-len 256 --random-output-len 128 --ignore-eos \
      --seed "$k" --max-concurrency "$half" --num-prompts "$((p / 2))" \
      --save-result --result-dir "$RESULT_DIR" --result-filename "split_${phase}_c${c}_${k}.json" \
      --disable-tqdm > "$LOGS/split_${phase}_c${c}_${k}.txt" 2>&1 &
    clients+=($!)
  done
  wait "${clients[@]}"  # the clients only: a bare `wait` would wait for the servers too
  grep -h "Output token throughput" "$LOGS"/split_"${phase}"_c"${c}"_*.txt | sed 's/^/    /'
}

nvidia-smi --query-gpu=name --format=csv,noheader | head -1 > "$RESULT_DIR/card.txt"
echo "$GPUS" > "$RESULT_DIR/gpus.txt"
say "card: $(cat "$RESULT_DIR/card.txt")"

probe() {  # phase base_url [api_key]
  # Where a lone request's time to first token goes, seen from the client (bench/ttft_probe.py:
  # headers, first event, first content; and the gateway's Server-Timing parts: auth, limits,
  # context, cache, moderation, generator), 30 sequential streamed requests.
  python3 "$ROOT/bench/ttft_probe.py" --url "$2" --model "$MODEL" --api-key "${3:-}" \
    --requests 30 --label "($1) $2, 250-word prompts" 2>&1 | tee "$RESULT_DIR/ttft_probe_$1.txt"
  # The same with prompts like the benchmark's (256 random token ids, decoded).
  python3 "$ROOT/bench/ttft_probe.py" --url "$2" --model "$MODEL" --api-key "${3:-}" \
    --requests 30 --random-tokens 256 --label "($1) $2, random-token prompts" 2>&1 \
    | tee -a "$RESULT_DIR/ttft_probe_$1.txt"
}

profile() {
  # py-spy on the gateway workers and the generator during the first run (PROFILE_DELAY_S
  # after it starts: past the benchmark client's own start-up).
  sleep "${PROFILE_DELAY_S:-15}"
  local targets="generator:$GENERATOR_PID"
  for pid in $(pgrep -P "$GATEWAY_PID"); do targets="$targets gateway:$pid"; done
  for target in $targets; do
    "$PYSPY" record --pid "${target#*:}" --duration 20 --rate 100 --format speedscope \
      --output "$RESULT_DIR/pyspy_${target%%:*}_${target#*:}.json" --nonblocking \
      > "$LOGS/pyspy_${target#*:}.txt" 2>&1 &
  done
  wait
}

# -- (a) vllm serve ---------------------------------------------------------------------------
if [[ " $PHASES " == *" a "* ]]; then
  say "(a) starting vllm serve on $GPUS GPU(s)"
  vllm serve "$MODEL" --max-model-len 2048 --gpu-memory-utilization 0.5 \
    --data-parallel-size "$GPUS" \
    --host 127.0.0.1 --port $VLLM_PORT > "$LOGS/vllm_serve.txt" 2>&1 &
  PIDS+=($!)
  if wait_http "http://127.0.0.1:$VLLM_PORT/health" 240; then
    say "(a) vllm serve ready"
    [ "${PROBE:-1}" = 1 ] && probe a "http://127.0.0.1:$VLLM_PORT"
    bench a "http://127.0.0.1:$VLLM_PORT"
    split_client a "http://127.0.0.1:$VLLM_PORT"
  else
    say "(a) vllm serve did not become ready"; tail -40 "$LOGS/vllm_serve.txt"
  fi
  stop_all
fi

# -- (b) the Parlance stack -----------------------------------------------------------------
if [[ " $PHASES " == *" b "* ]]; then
  export PYTHONPATH="$ROOT/services/common/src:$ROOT/services/generator/src:$ROOT/services/safety/src:$ROOT/services/gateway/src${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1
  REDIS_URL=""
  if [ -n "${REDIS_SERVER:-}" ] && [ -x "$REDIS_SERVER" ]; then
    LD_LIBRARY_PATH="$(dirname "$REDIS_SERVER")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
      "$REDIS_SERVER" --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no \
      > "$LOGS/redis.txt" 2>&1 &
    PIDS+=($!)
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
    say "(b) redis-server on port $REDIS_PORT"
  else
    say "(b) WARNING: no REDIS_SERVER: the gateway runs without Redis (per-process limits)"
  fi
  echo "${REDIS_URL:-none}" > "$RESULT_DIR/redis.txt"

  # One generator per GPU, each on its own port pair (gRPC 50051 + 10 i, metrics 9101 + 10 i).
  GENERATOR_URLS=""
  for ((i = 0; i < GPUS; i++)); do
    CUDA_VISIBLE_DEVICES=$i GENERATOR_ENGINE=vllm GENERATOR_MODEL="$MODEL" \
      GENERATOR_SERVED_MODEL_NAME="$MODEL" GENERATOR_MAX_MODEL_LEN=2048 \
      GENERATOR_GPU_MEMORY_UTILIZATION=0.5 GENERATOR_HOST=127.0.0.1 \
      GENERATOR_PORT=$((GEN_PORT + 10 * i)) GENERATOR_METRICS_PORT=$((9101 + 10 * i)) \
      python3 -m parlance.generator.main > "$LOGS/generator$i.txt" 2>&1 &
    PIDS+=($!)
    [ "$i" = 0 ] && GENERATOR_PID=$!
    GENERATOR_URLS="${GENERATOR_URLS:+$GENERATOR_URLS,}127.0.0.1:$((GEN_PORT + 10 * i))"
  done
  SAFETY_CLASSIFIER=profanity SAFETY_HOST=127.0.0.1 SAFETY_PORT=$SAFETY_PORT \
    SAFETY_METRICS_PORT=9102 python3 -m parlance.safety.main > "$LOGS/safety.txt" 2>&1 &
  PIDS+=($!)
  # History is off: nothing is stored (no `store`, no conversation_id), and its URL answers
  # nothing. Cache on as in production: the benchmark's sampled requests are never cached.
  GATEWAY_HOST=127.0.0.1 GATEWAY_PORT=$GATEWAY_PORT GATEWAY_GENERATOR_URL="$GENERATOR_URLS" \
    GATEWAY_SAFETY_URL=127.0.0.1:$SAFETY_PORT GATEWAY_HISTORY_URL=127.0.0.1:1 \
    GATEWAY_REDIS_URL="$REDIS_URL" GATEWAY_API_KEYS="bench:$API_KEY" \
    GATEWAY_RPM_LIMIT=10000000 GATEWAY_TPM_LIMIT=1000000000 GATEWAY_MAX_CONCURRENT_PER_KEY=4096 \
    GATEWAY_MAX_CONCURRENT_REQUESTS=4096 GATEWAY_MODERATE_INPUT=true GATEWAY_MODERATE_OUTPUT=false GATEWAY_WORKERS=${GATEWAY_WORKERS:-$((4 * GPUS))} \
    GATEWAY_DATABASE_URL="sqlite+aiosqlite:////tmp/parlance-bench-keys.db" \
    python3 -m parlance.gateway.main > "$LOGS/gateway.txt" 2>&1 &
  GATEWAY_PID=$!
  PIDS+=($!)
  # /readyz turns 200 once one replica serves the model: wait for every replica's health too.
  if wait_http "http://127.0.0.1:$GATEWAY_PORT/readyz" 300 && wait_serving "$GENERATOR_URLS" 300; then
    say "(b) Parlance ready"
    [ "${PROBE:-1}" = 1 ] && probe b "http://127.0.0.1:$GATEWAY_PORT" "$API_KEY"
    if [ -n "${PYSPY:-}" ] && [ -x "$PYSPY" ]; then profile & PROFILER=$!; fi
    OPENAI_API_KEY="$API_KEY" bench b "http://127.0.0.1:$GATEWAY_PORT"
    OPENAI_API_KEY="$API_KEY" split_client b "http://127.0.0.1:$GATEWAY_PORT"
    [ -n "${PROFILER:-}" ] && wait "$PROFILER"
    # Each replica's own count of finished calls: both must have served (summarize_scaleout.py).
    for ((i = 0; i < GPUS; i++)); do
      curl -s "http://127.0.0.1:$((9101 + 10 * i))/metrics" > "$RESULT_DIR/generator${i}_metrics.txt" || true
    done
  else
    say "(b) the stack did not become ready"
    curl -s "http://127.0.0.1:$GATEWAY_PORT/readyz"; echo
    for f in "$LOGS"/generator*.txt "$LOGS/safety.txt" "$LOGS/gateway.txt"; do
      echo "== $f"; tail -30 "$f"
    done
  fi
  stop_all
fi

python3 "$ROOT/bench/summarize_vllm.py" --result-dir "$RESULT_DIR" \
  --out "$RESULT_DIR/vllm_vs_parlance.md" && cat "$RESULT_DIR/vllm_vs_parlance.md"
say "done"

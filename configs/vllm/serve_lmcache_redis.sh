#!/usr/bin/env bash
# vLLM + LMCache with a Redis backend: KV chunks of the shared prefix survive restarts and are shared by
# several vLLM replicas. Needs `pip install lmcache` next to vllm and a reachable Redis.
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen3-VL-4B-Instruct}
PORT=${PORT:-8000}
export LMCACHE_CONFIG_FILE=${LMCACHE_CONFIG_FILE:-$(dirname "$0")/lmcache_redis.yaml}
exec vllm serve "$MODEL" \
  --host 127.0.0.1 --port "$PORT" \
  --enable-prefix-caching \
  --mm-processor-kwargs '{"max_pixels": 50176}' \
  --limit-mm-per-prompt '{"image": 9}' \
  --max-model-len 4096 \
  --max-logprobs 20 \
  --kv-transfer-config '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}' \
  "$@"

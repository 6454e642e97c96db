#!/usr/bin/env bash
# vLLM server for the roadminer VLM tier (kind vlm_vllm). Needs the `vllm` extra and a GPU.
# Short images (224x224 -> ~64 visual tokens), one output token: the win is prefix caching of the
# instructions + few-shot exemplars and many requests in flight.
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen3-VL-4B-Instruct}
PORT=${PORT:-8000}

# --enable-prefix-caching        reuse the few-shot prefix KV across requests (default on in V1; explicit here)
# --kv-cache-dtype fp8           halves KV memory (more sequences in flight); accuracy cost is small for 1 token
# --mm-processor-kwargs          visual token budget: max_pixels 224*224 keeps ~64 tokens per image
# --limit-mm-per-prompt          exemplars + the query image
# --max-model-len                the few-shot prompt is short; a small limit leaves memory to the KV cache
# --max-logprobs                 the tier asks for top_logprobs (10 by default)
exec vllm serve "$MODEL" \
  --host 127.0.0.1 --port "$PORT" \
  --enable-prefix-caching \
  --kv-cache-dtype fp8 \
  --mm-processor-kwargs '{"max_pixels": 50176, "min_pixels": 3136}' \
  --limit-mm-per-prompt '{"image": 9}' \
  --max-model-len 4096 \
  --max-logprobs 20 \
  --gpu-memory-utilization 0.85 \
  --max-num-seqs 256 \
  "$@"

"""Vision-language judges: vLLM client (vllm), in-process transformers (hf) with the Redis prefix-KV cache
(prefix_kv), random-weight test models (random_qwen). May import models.base, imaging and core."""

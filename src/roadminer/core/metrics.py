"""Prometheus metrics, one registry for the process. Label values are bounded sets (no hotkeys)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "roadminer_requests_total", "Requests by route, status code and caller class",
    ["route", "status", "caller"], registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "roadminer_request_latency_seconds", "End-to-end request latency inside the miner", ["route"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 9), registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "roadminer_batch_size", "Images per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
MODEL_LATENCY = Histogram(
    "roadminer_model_latency_seconds", "Time of one cascade call on a batch",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=REGISTRY,
)
TIER_EXITS = Counter("roadminer_tier_exits_total", "Images answered by each cascade tier", ["tier"],
                     registry=REGISTRY)
TIER_ERRORS = Counter("roadminer_tier_errors_total", "Tier failures (answered by a cheaper tier)", ["tier"],
                      registry=REGISTRY)
CACHE = Counter("roadminer_result_cache_total", "Result cache look-ups", ["result"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("roadminer_hard_example_queue_depth", "Pending hard examples", registry=REGISTRY)
BATCHER_DEPTH = Gauge("roadminer_batcher_queue_depth", "Requests waiting for the model", registry=REGISTRY)
INFLIGHT = Gauge("roadminer_inflight_requests", "Requests being served", registry=REGISTRY)
STATE_BACKEND_UP = Gauge("roadminer_state_backend_up", "1 when the configured state backend answers",
                         ["backend"], registry=REGISTRY)
STATE_FALLBACKS = Counter("roadminer_state_fallbacks_total", "Operations served by the in-memory fallback",
                          registry=REGISTRY)
REWARD = Gauge("roadminer_reward", "Latest reward per validator class", ["validator"], registry=REGISTRY)
MCC = Gauge("roadminer_mcc", "Rolling MCC (last 100) per validator", ["validator"], registry=REGISTRY)
ACCURACY = Gauge("roadminer_accuracy", "Rolling accuracy (last 10) per validator", ["validator"],
                 registry=REGISTRY)
MODEL_INFO = Info("roadminer_model", "Loaded model version", registry=REGISTRY)
# On-chain view of this miner (from the metagraph sync) and the GPU memory plan checked at start-up.
CHAIN_INCENTIVE = Gauge("roadminer_chain_incentive", "This miner's incentive on chain", registry=REGISTRY)
CHAIN_TRUST = Gauge("roadminer_chain_trust", "This miner's trust on chain", registry=REGISTRY)
CHAIN_EMISSION = Gauge("roadminer_chain_emission", "This miner's emission per tempo on chain",
                       registry=REGISTRY)
CHAIN_CONSENSUS = Gauge("roadminer_chain_consensus", "This miner's consensus on chain", registry=REGISTRY)
GPU_PLANNED = Gauge("roadminer_gpu_memory_planned_bytes", "Planned GPU memory per card (roadminer plan)",
                    ["gpu"], registry=REGISTRY)
GPU_CAPACITY = Gauge("roadminer_gpu_memory_capacity_bytes", "Usable GPU memory per card", ["gpu"],
                     registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)

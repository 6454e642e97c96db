// pm2 process file for one roadminer node: `pm2 start pm2.config.js` (add `--only roadminer-miner` for one app).
//
// Environment knobs (read when pm2 loads this file):
//   ROADMINER_VENV      virtualenv holding roadminer (default ./.venv, then /work/venv)
//   ROADMINER_NETWORK   chain network for miner and validator (default "finney")
//   ROADMINER_VALIDATOR set to 0 to leave the validator out (e.g. a miner-only node)
//   ROADMINER_VLLM      set to 1 to run a local `vllm serve` for the VLM tier
//   ROADMINER_VLLM_MODEL, ROADMINER_VLLM_PORT, ROADMINER_VLLM_GPU_UTIL  vLLM server settings
// Secrets (wallet files) stay on disk under ~/.bittensor; nothing secret belongs in this file.
const fs = require("fs");
const path = require("path");

const root = __dirname;
const env = process.env;
const venv = env.ROADMINER_VENV || [path.join(root, ".venv"), "/work/venv"].find((p) => fs.existsSync(p))
  || path.join(root, ".venv");
const bin = (name) => path.join(venv, "bin", name);
const logDir = env.ROADMINER_LOG_DIR || path.join(root, "logs");
const network = env.ROADMINER_NETWORK || "finney";
const on = (name, dflt = false) => {
  const v = String(env[name] ?? "").toLowerCase();
  return v === "" ? dflt : ["1", "true", "yes"].includes(v);
};

// Shared restart policy: back off exponentially on crash loops, give in-flight requests time to finish.
const policy = {
  autorestart: true,
  max_restarts: 20,
  min_uptime: "60s",
  exp_backoff_restart_delay: 1000,
  kill_timeout: 15000,
  merge_logs: true,
  time: true,
  log_date_format: "YYYY-MM-DD HH:mm:ss.SSS",
};

const common = {
  PYTHONUNBUFFERED: "1",
  HF_HUB_OFFLINE: env.HF_HUB_OFFLINE || "1",
  YOLO_OFFLINE: "1",
  YOLO_AUTOINSTALL: "False",
  ROADMINER_CHAIN__NETWORK: network,
  ROADMINER_STATE__BACKEND: env.ROADMINER_STATE__BACKEND || "redis",
  ROADMINER_STATE__REDIS_URL: env.ROADMINER_STATE__REDIS_URL || "redis://127.0.0.1:6379/0",
};

const logs = (name) => ({
  out_file: path.join(logDir, `${name}.out.log`),
  error_file: path.join(logDir, `${name}.err.log`),
});

const apps = [
  {
    name: "roadminer-miner",
    script: bin("roadminer"),
    args: ["miner", "--config", "configs/miner.yaml"],
    interpreter: "none",
    cwd: root,
    max_memory_restart: env.ROADMINER_MINER_MAX_MEMORY || "24G",
    env: { ...common, ROADMINER_DEVICE: env.ROADMINER_DEVICE || "cuda" },
    ...logs("miner"),
    ...policy,
  },
  {
    name: "roadminer-dashboard",
    script: bin("roadminer"),
    args: ["dashboard", "--config", "configs/miner.yaml", "--port", env.ROADMINER_DASHBOARD_PORT || "8095"],
    interpreter: "none",
    cwd: root,
    env: { ...common, ROADMINER_DASHBOARD__MINER_URL: env.ROADMINER_DASHBOARD__MINER_URL || "http://127.0.0.1:8091" },
    ...logs("dashboard"),
    ...policy,
  },
];

if (on("ROADMINER_VALIDATOR", true)) {
  apps.push({
    name: "roadminer-validator",
    script: bin("roadminer"),
    args: ["validator", "--config", "configs/validator.yaml"],
    interpreter: "none",
    cwd: root,
    env: { ...common },
    ...logs("validator"),
    ...policy,
  });
}

if (on("ROADMINER_VLLM")) {
  const port = env.ROADMINER_VLLM_PORT || "8000";
  apps.push({
    name: "roadminer-vllm",
    script: bin("vllm"),
    args: [
      "serve", env.ROADMINER_VLLM_MODEL || "Qwen/Qwen2.5-VL-7B-Instruct",
      "--host", "127.0.0.1", "--port", port,
      "--served-model-name", "roadminer-vlm",
      "--enable-prefix-caching", "--kv-cache-dtype", "fp8",
      "--max-model-len", "4096", "--max-num-seqs", "16",
      "--gpu-memory-utilization", env.ROADMINER_VLLM_GPU_UTIL || "0.45",
      "--limit-mm-per-prompt", '{"image":1}',
    ],
    interpreter: "none",
    cwd: root,
    env: { ...common, VLLM_NO_USAGE_STATS: "1" },
    ...logs("vllm"),
    ...policy,
    // Loading weights takes minutes: a slow start is not a crash loop.
    min_uptime: "300s",
    kill_timeout: 30000,
  });
}

module.exports = { apps };

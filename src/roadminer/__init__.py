"""roadminer: miner and validator node for a roadwork-detection subnet (SN72 wire protocol)."""

__version__ = "0.1.0"
# Integer spec version, as bittensor subnets publish it (major*1000 + minor*10 + patch).
__spec_version__ = 10

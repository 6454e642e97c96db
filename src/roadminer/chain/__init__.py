"""The chain view: a local chain file or the bittensor 11 metagraph (stakes, permits, weights, axons), and
reward forensics (per-epoch ratings of our UID, drop alerts). May
import protocol and core."""

"""The chain view: a local chain file or the bittensor 11 metagraph (stakes, permits, weights, axons). May
import protocol and core."""

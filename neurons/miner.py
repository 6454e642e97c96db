"""Miner entry point (bittensor convention): ``python neurons/miner.py [roadminer miner flags]``."""

from roadminer.miner.commands import main

if __name__ == "__main__":
    main()

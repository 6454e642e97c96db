"""Miner entry point (bittensor convention): ``python neurons/miner.py [roadminer miner flags]``."""

import sys

from roadminer.cli import app

if __name__ == "__main__":
    app(prog_name="roadminer", args=["miner", *sys.argv[1:]])

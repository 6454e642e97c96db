"""Validator entry point (bittensor convention): ``python neurons/validator.py [validator flags]``."""

import sys

from roadminer.cli import app

if __name__ == "__main__":
    app(prog_name="roadminer", args=["validator", *sys.argv[1:]])

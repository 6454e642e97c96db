"""loguru set-up shared by every entry point."""

from __future__ import annotations

import sys

from loguru import logger


def setup_logging(level: str = "INFO", file: str | None = None, json_logs: bool = False) -> None:
    logger.remove()
    logger.add(sys.stderr, level=level.upper(), serialize=json_logs, backtrace=False, diagnose=False,
               format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> <cyan>{name}</cyan> {message}")
    if file:
        logger.add(file, level=level.upper(), serialize=json_logs, rotation="50 MB", retention=5,
                   backtrace=False, diagnose=False)

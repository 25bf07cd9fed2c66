"""Diagnostics, written to the host's log file (never to kubelet)."""

from wit_world.imports.log import Level, log as _log

__all__ = ["debug", "info", "warn", "error"]


def debug(message: str) -> None:
    _log(Level.DEBUG, str(message))


def info(message: str) -> None:
    _log(Level.INFO, str(message))


def warn(message: str) -> None:
    _log(Level.WARN, str(message))


def error(message: str) -> None:
    _log(Level.ERROR, str(message))

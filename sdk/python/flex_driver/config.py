"""Non-secret settings from the policy's `[config]` table."""

from __future__ import annotations

from typing import Dict, Optional

from wit_world.imports import config as _host

__all__ = ["get", "get_all"]


def get(key: str, default: Optional[str] = None) -> Optional[str]:
    value = _host.get(key)
    return default if value is None else value


def get_all() -> Dict[str, str]:
    return dict(_host.get_all())

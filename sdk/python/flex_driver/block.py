"""Block devices and loop-backed images, as the policy's `[block]` allows (worlds `driver` and
`block-driver`). Every refusal raises `DriverError` with the host's message."""

from __future__ import annotations

from typing import Optional

from componentize_py_types import Err
from wit_world.imports import block as _host

from . import DriverError


def _checked(call, *args):
    try:
        return call(*args)
    except Err as error:
        raise DriverError(str(error.value)) from None


def probe_fs(device: str) -> Optional[str]:
    """The file system on a device (`ext4`, `xfs`...); None when it is blank."""
    return _checked(_host.probe_fs, device)


def mkfs(device: str, fs_type: str) -> None:
    """Formats a blank device; the host refuses any device that carries a signature."""
    _checked(_host.mkfs, device, fs_type)


def resize_fs(device: str, mount_path: str) -> None:
    _checked(_host.resize_fs, device, mount_path)


def device_size(device: str) -> int:
    return _checked(_host.device_size, device)


def wait_for_device(device: str, timeout_ms: int) -> bool:
    return _checked(_host.wait_for_device, device, timeout_ms)


def create_image(name: str, size: int) -> int:
    return _checked(_host.create_image, name, size)


def image_size(name: str) -> Optional[int]:
    return _checked(_host.image_size, name)


def grow_image(name: str, size: int) -> None:
    _checked(_host.grow_image, name, size)


def delete_image(name: str) -> None:
    _checked(_host.delete_image, name)


def attach_image(name: str) -> str:
    return _checked(_host.attach_image, name)


def image_device(name: str) -> Optional[str]:
    return _checked(_host.image_device, name)


def detach_image(name: str) -> None:
    _checked(_host.detach_image, name)

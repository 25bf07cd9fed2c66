"""Mounting through the host. Only the directory kubelet passed in this call may be a target.

A refusal or a failed mount raises `DriverError` with the host's message, which a verb may let
escape: it becomes the call's `Failure`.
"""

from __future__ import annotations

from componentize_py_types import Err
from wit_world.imports import mounts as _host

from . import DriverError

__all__ = ["Mount", "bind", "remount", "unmount", "is_mountpoint"]


def _checked(call, *args):
    try:
        return call(*args)
    except Err as error:
        raise DriverError(str(error.value)) from None


class Mount:
    """A mount to perform: `Mount(source, target)` and friends, run with `.mount()`."""

    def __init__(self, source: str, target: str) -> None:
        self._request = _host.MountRequest(
            source=source, target=target, fs_type="", options=[], bind=False)

    @classmethod
    def bind(cls, source: str, target: str) -> "Mount":
        """A bind mount of `source` (a directory) onto `target`."""
        mount = cls(source, target)
        mount._request.bind = True
        return mount

    def fs_type(self, fs_type: str) -> "Mount":
        self._request.fs_type = fs_type
        return self

    def option(self, option: str) -> "Mount":
        """One mount option: a flag such as `ro`, or a file system parameter such as
        `size=64m`. The host checks each comma-separated piece against the policy and always
        adds the options the policy requires (`nosuid,nodev` by default)."""
        self._request.options.append(str(option))
        return self

    def read_only(self, read_only: bool) -> "Mount":
        return self.option("ro") if read_only else self

    def mount(self) -> None:
        _checked(_host.mount, self._request)


def bind(source: str, target: str) -> Mount:
    """`Mount.bind(source, target)`."""
    return Mount.bind(source, target)


def remount(target: str, options: list[str]) -> None:
    """Changes the flags of a mount the call may target (`ro`, `nosuid`...)."""
    _checked(_host.remount, target, [str(o) for o in options])


def unmount(target: str) -> None:
    _checked(_host.unmount, target)


def is_mountpoint(path: str) -> bool:
    return _checked(_host.is_mountpoint, path)

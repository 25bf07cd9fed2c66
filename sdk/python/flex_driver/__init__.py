"""Write a Kubernetes FlexVolume driver for `flex` in Python, as a WebAssembly component.

The shape is the Rust SDK's (`guest-sdk`): a driver is a subclass of `Driver`; every verb
defaults to `Not supported` except `init`, which must report the driver's capabilities.
Privileged work goes through the host, which checks it against the node's policy, in the
modules `flex_driver.mounts`, `flex_driver.config`, `flex_driver.log` (and `flex_driver.block`,
`flex_driver.exec` for drivers built against a world that imports them). Files live under
`/state` when the policy grants `[state]`. A driver never prints: kubelet reads stdout and
stderr together as the reply, so diagnostics go through `flex_driver.log`.

Errors are exceptions. `DriverError("text")` becomes a `Failure` whose message is the text;
`NotSupported()` becomes `Not supported`; any other exception escaping a verb becomes a
`Failure` naming its type and message (`ValueError: ...`), with the traceback in the host's
log. Nothing a verb does can reach kubelet as componentize-py's "unexpected exception".

    from flex_driver import Capabilities, Driver, Options, export, mounts

    class Scratch(Driver):
        def init(self) -> Capabilities:
            return Capabilities(attach=False)

        def mount(self, target_dir: str, options: Options) -> None:
            if mounts.is_mountpoint(target_dir):
                return  # kubelet retries: already done is success
            mounts.Mount("tmpfs", target_dir).fs_type("tmpfs").read_only(options.read_only).mount()

        def unmount(self, target_dir: str) -> None:
            if mounts.is_mountpoint(target_dir):
                mounts.unmount(target_dir)

    Verbs = export(Scratch)   # the name componentize-py looks for

Build with `sdk/python/build.sh --world mount-driver --app DIR MODULE -o driver.wasm`.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Dict, Optional

__all__ = [
    "Capabilities",
    "Driver",
    "DriverError",
    "NotSupported",
    "Options",
    "export",
    "parse_quantity",
]


class DriverError(Exception):
    """A failure with a message for kubelet's events and logs: the reply's `message`."""


class NotSupported(Exception):
    """`Not supported`, which kubelet caches per verb for the driver's lifetime: raise it
    unconditionally for a verb, never for one volume."""


@dataclass
class Capabilities:
    """What `init` reports. The defaults are kubelet's, except `attach`, which defaults to
    False: a driver that does not implement attach must say so, or pods wait for an attach
    that never comes."""

    attach: bool = False
    selinux_relabel: bool = True
    supports_metrics: bool = False
    fs_group: bool = True
    requires_fs_resize: bool = False


@dataclass
class Options:
    """The option JSON kubelet passes, with the well-known keys parsed (empty strings from
    kubelet are None). Every field has a default, so a unit test names only what it needs."""

    #: `kubernetes.io/fsType`
    fs_type: Optional[str] = None
    #: `kubernetes.io/readwrite` is `ro`
    read_only: bool = False
    #: `kubernetes.io/pvOrVolumeName`
    pv_or_volume_name: Optional[str] = None
    #: `kubernetes.io/pod.name`, `.namespace`, `.uid` (mount only)
    pod_name: Optional[str] = None
    pod_namespace: Optional[str] = None
    pod_uid: Optional[str] = None
    #: `kubernetes.io/serviceAccount.name` (mount only)
    service_account_name: Optional[str] = None
    #: `kubernetes.io/mounterArgs.FsGroup` or the older `kubernetes.io/fsGroup` (mount only)
    fs_group: Optional[int] = None
    #: `kubernetes.io/secret/<name>`, base64-decoded (mount only)
    secrets: Dict[str, bytes] = field(default_factory=dict)
    #: Every other key: the volume's own `options`, or StorageClass parameters.
    extra: Dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """A driver-specific option (the volume's `options`, or a StorageClass parameter)."""
        return self.extra.get(key, default)

    def secret(self, name: str) -> Optional[bytes]:
        """A secret from the volume's `secretRef` (only `mount` receives secrets)."""
        return self.secrets.get(name)


def parse_quantity(text: str) -> int:
    """Bytes from a size option: plain bytes (`1048576`) or a Kubernetes quantity (`64Mi`,
    `1G`). Zero and malformed values raise DriverError."""
    units = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
             "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    digits = len(text) - len(text.lstrip("0123456789"))
    number, suffix = text[:digits], text[digits:]
    if not number or suffix not in units or int(number) * units[suffix] == 0 \
            or int(number) * units[suffix] >= 1 << 64:
        raise DriverError(
            f"invalid size {text!r}: expected bytes or a quantity such as 512Mi or 1Gi")
    return int(number) * units[suffix]


class Driver:
    """The FlexVolume verbs. Each defaults to `Not supported`, which kubelet caches per verb
    and then does its own default (see the FlexVolume protocol); `init` must be overridden.
    Every verb must be idempotent: kubelet retries everything."""

    def init(self) -> Capabilities:
        raise NotImplementedError("a driver must implement init")

    def get_volume_name(self, options: Options) -> str:
        raise NotSupported()

    def attach(self, options: Options, node: str) -> str:
        """Returns the device path."""
        raise NotSupported()

    def detach(self, volume_name: str, node: str) -> None:
        raise NotSupported()

    def wait_for_attach(self, device: str, options: Options) -> str:
        """Returns the device path; `device` may be empty."""
        raise NotSupported()

    def is_attached(self, options: Options, node: str) -> bool:
        raise NotSupported()

    def mount_device(self, device_mount_path: str, device: str, options: Options) -> None:
        raise NotSupported()

    def unmount_device(self, device_mount_path: str) -> None:
        raise NotSupported()

    def mount(self, target_dir: str, options: Options) -> None:
        raise NotSupported()

    def unmount(self, target_dir: str) -> None:
        raise NotSupported()

    def expand_volume(self, options: Options, device_mount_path: str, new_size: int,
                      old_size: int) -> int:
        """Returns the new size in bytes."""
        raise NotSupported()

    def expand_fs(self, options: Options, device: str, device_mount_path: str,
                  new_size: int, old_size: int) -> None:
        raise NotSupported()

    def provision(self, options: Options) -> None:
        raise NotSupported()

    def delete(self, options: Options) -> None:
        raise NotSupported()


# What each verb takes (`o` marks the options argument) and returns.
_VERBS = {
    "init": ("", "capabilities"),
    "get_volume_name": ("o", str),
    "attach": ("o-", str),
    "detach": ("--", None),
    "wait_for_attach": ("-o", str),
    "is_attached": ("o-", bool),
    "mount_device": ("--o", None),
    "unmount_device": ("-", None),
    "mount": ("-o", None),
    "unmount": ("-", None),
    "expand_volume": ("o---", int),
    "expand_fs": ("o----", None),
    "provision": ("o", None),
    "delete": ("o", None),
}


def _options(wit) -> Options:
    return Options(
        fs_type=wit.fs_type,
        read_only=wit.read_only,
        pv_or_volume_name=wit.pv_or_volume_name,
        pod_name=wit.pod_name,
        pod_namespace=wit.pod_namespace,
        pod_uid=wit.pod_uid,
        service_account_name=wit.service_account_name,
        fs_group=wit.fs_group,
        secrets={s.name: bytes(s.value) for s in wit.secrets},
        extra=dict(wit.extra),
    )


def _capabilities(caps):
    from wit_world.imports import types

    if not isinstance(caps, Capabilities):
        raise TypeError(f"init must return flex_driver.Capabilities, not {type(caps).__name__}")
    return types.Capabilities(
        attach=bool(caps.attach),
        selinux_relabel=bool(caps.selinux_relabel),
        supports_metrics=bool(caps.supports_metrics),
        fs_group=bool(caps.fs_group),
        requires_fs_resize=bool(caps.requires_fs_resize),
    )


def _describe(error: BaseException) -> str:
    """An uncaught exception as kubelet sees it: its type and message."""
    text = str(error)
    name = type(error).__name__
    return f"{name}: {text}" if text else name


def _failure_for(verb: str, error: BaseException):
    """The WIT `error` for an exception that escaped `verb` (logged with its traceback unless
    it is a DriverError or NotSupported)."""
    from wit_world.imports import types

    if isinstance(error, NotSupported):
        return types.Error_NotSupported()
    if isinstance(error, DriverError):
        return types.Error_Failure(str(error) or "failed")
    try:
        from . import log

        log.error(f"{verb}: uncaught {traceback.format_exc()}")
    except BaseException:  # noqa: BLE001 -- the reply matters more than the log line
        pass
    return types.Error_Failure(_describe(error))


def _call(driver_class, verb: str, args):
    """Runs one verb of a fresh driver: exceptions become the WIT `error` variant."""
    from componentize_py_types import Err

    shape, returns = _VERBS[verb]
    try:
        converted = [_options(a) if kind == "o" else a for kind, a in zip(shape, args)]
        result = getattr(driver_class(), verb)(*converted)
        if returns == "capabilities":
            return _capabilities(result)
        if returns is None:
            return None
        if returns is int and isinstance(result, bool) or not isinstance(result, returns):
            raise TypeError(f"{verb} must return {returns.__name__}, not {type(result).__name__}")
        return result
    except BaseException as error:  # noqa: BLE001 -- every failure is a reply
        raise Err(_failure_for(verb, error))


def export(driver_class):
    """The class componentize-py exports as `flex:volume/verbs`, for a `Driver` subclass:
    assign it to `Verbs` in the app module (`Verbs = export(MyDriver)`)."""
    from wit_world import exports

    if not (isinstance(driver_class, type) and issubclass(driver_class, Driver)):
        raise TypeError("export() takes a subclass of flex_driver.Driver")
    if driver_class.init is Driver.init:
        raise TypeError(f"{driver_class.__name__} must implement init")

    def verb(name):
        return lambda self, *args: _call(driver_class, name, args)

    methods = {name: verb(name) for name in _VERBS}
    return type("Verbs", (exports.Verbs,), methods)

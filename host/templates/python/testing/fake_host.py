"""A fake of the component's imports, for unit-testing the driver with plain CPython
(`python3 -m unittest`): no componentize-py, no wasm, no root.

componentize-py generates the `wit_world` bindings only when it builds the component. Before
the driver (and the SDK in vendor/) is imported, `install()` puts stand-ins for the modules
the mount-driver world provides into `sys.modules`: `wit_world.imports.{types,log,mounts,
config}`, `wit_world.exports` and `componentize_py_types`. They record every host call and
keep the state the real host keeps (what is mounted where); they check no policy: `flex test`
runs the built component for real.
"""

import enum
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple


class Err(Exception):
    """componentize_py_types.Err: a WIT `result` error; `value` is the payload."""

    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value


@dataclass
class MountRequest:
    source: str
    target: str
    fs_type: str
    options: List[str]
    bind: bool


class Level(enum.Enum):
    DEBUG = 0
    INFO = 1
    WARN = 2
    ERROR = 3


@dataclass
class Host:
    """What the driver did and what the host holds. `fail_next[operation] = message` makes
    the next call of that operation (`mount`, `unmount`, `is_mountpoint`, `remount`) fail."""

    calls: List[Tuple[str, Any]] = field(default_factory=list)
    logs: List[Tuple[str, str]] = field(default_factory=list)
    mounted: Dict[str, MountRequest] = field(default_factory=dict)
    config: Dict[str, str] = field(default_factory=dict)
    fail_next: Dict[str, str] = field(default_factory=dict)

    def _call(self, operation: str, argument: Any) -> None:
        self.calls.append((operation, argument))
        message = self.fail_next.pop(operation, None)
        if message is not None:
            raise Err(message)

    def mount(self, request: MountRequest) -> None:
        self._call("mount", request)
        if request.target in self.mounted:
            raise Err(f"{request.target} is already a mount point")
        self.mounted[request.target] = request

    def unmount(self, target: str) -> None:
        self._call("unmount", target)
        if self.mounted.pop(target, None) is None:
            raise Err(f"{target} is not a mount point")

    def remount(self, target: str, options: List[str]) -> None:
        self._call("remount", (target, options))

    def is_mountpoint(self, path: str) -> bool:
        self._call("is_mountpoint", path)
        return path in self.mounted


host = Host()


def reset() -> Host:
    """A fresh host for one test."""
    global host
    host = Host()
    return host


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def install() -> None:
    """Installs the stand-ins (idempotent)."""
    if "wit_world" in sys.modules:
        return

    @dataclass
    class Capabilities:
        attach: bool
        selinux_relabel: bool
        supports_metrics: bool
        fs_group: bool
        requires_fs_resize: bool

    @dataclass
    class Error_NotSupported:
        pass

    @dataclass
    class Error_Failure:
        value: str

    def log(level: Level, message: str) -> None:
        host.logs.append((level.name.lower(), message))

    def config_get(key: str) -> Optional[str]:
        return host.config.get(key)

    imports = {
        "types": dict(Capabilities=Capabilities, Error_NotSupported=Error_NotSupported,
                      Error_Failure=Error_Failure),
        "log": dict(Level=Level, log=log),
        "mounts": dict(MountRequest=MountRequest,
                       mount=lambda request: host.mount(request),
                       unmount=lambda target: host.unmount(target),
                       remount=lambda target, options: host.remount(target, options),
                       is_mountpoint=lambda path: host.is_mountpoint(path)),
        "config": dict(get=config_get, get_all=lambda: list(host.config.items())),
    }
    _module("componentize_py_types", Err=Err)
    world = _module("wit_world")
    world.imports = _module("wit_world.imports")
    for name, attributes in imports.items():
        setattr(world.imports, name, _module(f"wit_world.imports.{name}", **attributes))
    world.exports = _module("wit_world.exports", Verbs=type("Verbs", (), {}))

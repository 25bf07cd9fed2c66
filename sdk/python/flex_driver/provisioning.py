"""Dynamic provisioning for `flex provisioner`: the WIT interface `flex:volume/provisioning`,
for a component built against a world that exports it (`mount-provisioning-driver`).

`flex provisioner` watches PersistentVolumeClaims whose StorageClass names this driver as its
`provisioner`. It calls `describe` first and refuses, with an event and no call, a claim
asking for an access mode or a StorageClass parameter the driver does not list. `provision`
then creates the backend volume; the PersistentVolume is named `request.name`
(`pvc-<claim uid>`), gets `capacity_bytes` as its capacity and `options` in its
`flexVolume.options`, which every node verb receives. When a PV with reclaim policy `Delete` is
released, `delete` gets the PV's name and those options back. Both are retried after any
failure or crash, so both must be idempotent.

    from flex_driver.provisioning import (
        AccessMode, Provisioned, Provisioner, ProvisionerInfo, ProvisionRequest,
        export_provisioning)

    class Dirs(Provisioner):
        def describe(self) -> ProvisionerInfo:
            return ProvisionerInfo(node_local=True)

        def provision(self, request: ProvisionRequest) -> Provisioned:
            os.makedirs(f"/state/volumes/{request.name}", exist_ok=True)
            return Provisioned(request.requested_bytes)

        def delete(self, name: str, options: Dict[str, str]) -> None:
            ...

    Provisioning = export_provisioning(Dirs)   # the name componentize-py looks for

Errors are the verbs' (`DriverError`, and any other exception becomes a `Failure` naming it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from . import NotSupported, _failure_for

__all__ = [
    "AccessMode",
    "ProvisionRequest",
    "Provisioned",
    "Provisioner",
    "ProvisionerInfo",
    "export_provisioning",
]


class AccessMode(enum.Enum):
    """A claim's access mode, by its Kubernetes name."""

    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_ONLY_MANY = "ReadOnlyMany"
    READ_WRITE_MANY = "ReadWriteMany"


@dataclass
class ProvisionerInfo:
    """What `describe` reports. The defaults: ReadWriteOnce only, no StorageClass parameters,
    volumes reachable from every node."""

    access_modes: List[AccessMode] = field(default_factory=lambda: [AccessMode.READ_WRITE_ONCE])
    #: StorageClass `parameters` keys the driver understands (it validates their values).
    parameters: List[str] = field(default_factory=list)
    #: The volumes live on the provisioner's machine (a directory of its own `/state`): each
    #: PV gets a node affinity to that node, and only the provisioner there deletes it.
    node_local: bool = False


@dataclass
class ProvisionRequest:
    """One claim to provision. Every field but `name` has a default, for unit tests."""

    #: The PersistentVolume's name, `pvc-<claim uid>`: the same on every retry.
    name: str
    #: The claim's `resources.requests.storage`, in bytes.
    requested_bytes: int = 0
    #: The claim's `resources.limits.storage`, if set: never allocate more.
    limit_bytes: Optional[int] = None
    #: The StorageClass's `parameters`.
    parameters: Dict[str, str] = field(default_factory=dict)
    access_modes: List[AccessMode] = field(default_factory=lambda: [AccessMode.READ_WRITE_ONCE])
    #: The StorageClass's `fsType` parameter, if any.
    fs_type: Optional[str] = None
    claim_name: str = ""
    claim_namespace: str = ""
    claim_annotations: Dict[str, str] = field(default_factory=dict)
    #: For `volumeBindingMode: WaitForFirstConsumer`: the node the scheduler chose.
    selected_node: Optional[str] = None

    def unknown_parameter(self, known: Sequence[str]) -> Optional[str]:
        """The first StorageClass parameter not in `known`, if any."""
        return next((key for key in self.parameters if key not in known), None)


@dataclass
class Provisioned:
    """What `provision` made: the PV's capacity (at least the requested bytes) and the
    options recorded in the PV (node verbs and `delete` get them back)."""

    capacity_bytes: int
    options: Dict[str, str] = field(default_factory=dict)


class Provisioner:
    """The provisioning functions. `describe` must be overridden; `provision` and `delete`
    default to `Not supported`."""

    def describe(self) -> ProvisionerInfo:
        raise NotImplementedError("a provisioner must implement describe")

    def provision(self, request: ProvisionRequest) -> Provisioned:
        """Creates the volume `request.name`, or returns the one that already exists."""
        raise NotSupported()

    def delete(self, name: str, options: Dict[str, str]) -> None:
        """Deletes the volume `name`; one that no longer exists is success."""
        raise NotSupported()


# The WIT enum's cases, in order.
_WIT_ACCESS_MODES = [AccessMode.READ_WRITE_ONCE, AccessMode.READ_ONLY_MANY,
                     AccessMode.READ_WRITE_MANY]


def _request(wit) -> ProvisionRequest:
    return ProvisionRequest(
        name=wit.name,
        requested_bytes=wit.requested_bytes,
        limit_bytes=wit.limit_bytes,
        parameters=dict(wit.parameters),
        access_modes=[_WIT_ACCESS_MODES[mode.value] for mode in wit.access_modes],
        fs_type=wit.fs_type,
        claim_name=wit.claim_name,
        claim_namespace=wit.claim_namespace,
        claim_annotations=dict(wit.claim_annotations),
        selected_node=wit.selected_node,
    )


def _info(info):
    from wit_world.exports import provisioning

    if not isinstance(info, ProvisionerInfo):
        raise TypeError(
            f"describe must return flex_driver.provisioning.ProvisionerInfo, not {type(info).__name__}")
    return provisioning.ProvisionerInfo(
        access_modes=[provisioning.AccessMode(_WIT_ACCESS_MODES.index(AccessMode(mode)))
                      for mode in info.access_modes],
        parameters=[str(key) for key in info.parameters],
        node_local=bool(info.node_local),
    )


def _provisioned(result):
    from wit_world.exports import provisioning

    if not isinstance(result, Provisioned):
        raise TypeError(
            f"provision must return flex_driver.provisioning.Provisioned, not {type(result).__name__}")
    return provisioning.Provisioned(
        capacity_bytes=int(result.capacity_bytes),
        options=[(str(k), str(v)) for k, v in result.options.items()],
    )


def export_provisioning(provisioner_class):
    """The class componentize-py exports as `flex:volume/provisioning`, for a `Provisioner`
    subclass: assign it to `Provisioning` in the app module."""
    from componentize_py_types import Err
    from wit_world import exports

    if not (isinstance(provisioner_class, type) and issubclass(provisioner_class, Provisioner)):
        raise TypeError("export_provisioning() takes a subclass of flex_driver.provisioning.Provisioner")
    if provisioner_class.describe is Provisioner.describe:
        raise TypeError(f"{provisioner_class.__name__} must implement describe")

    def describe(self):
        # `describe` has no error case in the WIT: a failure here traps, and the controller
        # logs the call as failed.
        return _info(provisioner_class().describe())

    def provision(self, request):
        try:
            return _provisioned(provisioner_class().provision(_request(request)))
        except BaseException as error:  # noqa: BLE001 -- every failure is a reply
            raise Err(_failure_for("provision", error))

    def delete(self, name, options):
        try:
            provisioner_class().delete(name, dict(options))
        except BaseException as error:  # noqa: BLE001 -- every failure is a reply
            raise Err(_failure_for("delete", error))

    return type("Provisioning", (exports.Provisioning,),
                {"describe": describe, "provision": provision, "delete": delete})

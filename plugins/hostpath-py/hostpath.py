"""`flex~hostpath-py`: a persistent directory per volume, kept in the driver's own state
directory and bind-mounted (nosuid, nodev) onto the pod's volume directory. Not attachable:
kubelet only calls `init`, `mount` and `unmount`. The data outlives the pod; removing a
volume's directory is the operator's job.

The host preopens the policy's `[state]` directory as `/state`; the driver creates
`/state/volumes/<volume>` there. A bind source is a host path, so the policy tells the driver
where that directory is on the host (`[config] volumes_dir`) and grants exactly its entries
as bind sources (`[mount] sources`).

Options: `readOnly: true` binds it read-only.

It also provisions for `flex provisioner` (world `mount-provisioning-driver`): a claim gets an
empty directory named after its PersistentVolume (node-local: the PV is pinned to the
provisioner's node), and a released PV with reclaim policy `Delete` has its directory and
everything in it removed. The PV's capacity is what the claim asked for; the policy's
`[config] max_volume_bytes`, if set, refuses larger claims. Nothing enforces a size per
directory: all volumes together are bounded by the policy's `state_bytes`.
"""

import os
import re
import shutil
from typing import Dict

from flex_driver import Capabilities, Driver, DriverError, Options, config, export, log, mounts
from flex_driver.provisioning import (AccessMode, Provisioned, Provisioner, ProvisionerInfo,
                                      ProvisionRequest, export_provisioning)

# The volume names a directory may have: one path component, never `.` or `..`.
VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def checked_name(name: str) -> str:
    if not VOLUME_NAME.fullmatch(name):
        raise DriverError(f"volume name {name!r} is not a valid directory name")
    return name


def volume_name(options: Options) -> str:
    name = options.pv_or_volume_name
    if name is None:
        raise DriverError("no volume name (kubernetes.io/pvOrVolumeName) in the options")
    return checked_name(name)


class HostPath(Driver):
    def init(self) -> Capabilities:
        # kubelet applies the pod's fsGroup to the directory itself (fs_group defaults to True).
        return Capabilities(attach=False)

    def mount(self, target_dir: str, options: Options) -> None:
        name = volume_name(options)
        volumes_dir = config.get("volumes_dir")
        if not volumes_dir:
            raise DriverError("the policy's [config] has no volumes_dir")
        if mounts.is_mountpoint(target_dir):
            log.info(f"{target_dir} is already mounted")
            return
        os.makedirs(f"/state/volumes/{name}", exist_ok=True)
        source = f"{volumes_dir.rstrip('/')}/{name}"
        mounts.bind(source, target_dir).option("nosuid").option("nodev") \
            .read_only(options.read_only).mount()
        log.info(f"bound {source} onto {target_dir}")

    def unmount(self, target_dir: str) -> None:
        if mounts.is_mountpoint(target_dir):
            mounts.unmount(target_dir)


class HostPathVolumes(Provisioner):
    def describe(self) -> ProvisionerInfo:
        # The directory is on the provisioner's node: one node's pods share it.
        return ProvisionerInfo(access_modes=[AccessMode.READ_WRITE_ONCE], node_local=True)

    def provision(self, request: ProvisionRequest) -> Provisioned:
        # Everything is checked before the directory is made.
        name = checked_name(request.name)
        unknown = request.unknown_parameter([])
        if unknown is not None:
            raise DriverError(f"unknown StorageClass parameter {unknown!r} (it takes none)")
        for mode in request.access_modes:
            if mode is not AccessMode.READ_WRITE_ONCE:
                raise DriverError(f"access mode {mode.value} is not supported: the directory "
                                  "is on one node (ReadWriteOnce)")
        limit = config.get("max_volume_bytes")
        if limit and request.requested_bytes > int(limit):
            raise DriverError(f"{request.requested_bytes} bytes requested: this node's policy "
                              f"allows at most {limit} per volume")
        os.makedirs(f"/state/volumes/{name}", exist_ok=True)
        log.info(f"provisioned {name}")
        return Provisioned(request.requested_bytes)

    def delete(self, name: str, options: Dict[str, str]) -> None:
        path = f"/state/volumes/{checked_name(name)}"
        if os.path.islink(path):
            os.unlink(path)  # removed, never followed (and /state is all the driver can reach)
        elif os.path.lexists(path):
            shutil.rmtree(path)
        else:
            return
        log.info(f"deleted {name}")


Verbs = export(HostPath)
Provisioning = export_provisioning(HostPathVolumes)

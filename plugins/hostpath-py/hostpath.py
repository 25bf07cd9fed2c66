"""`flex~hostpath-py`: a persistent directory per volume, kept in the driver's own state
directory and bind-mounted (nosuid, nodev) onto the pod's volume directory. Not attachable:
kubelet only calls `init`, `mount` and `unmount`. The data outlives the pod; removing a
volume's directory is the operator's job.

The host preopens the policy's `[state]` directory as `/state`; the driver creates
`/state/volumes/<volume>` there. A bind source is a host path, so the policy tells the driver
where that directory is on the host (`[config] volumes_dir`) and grants exactly its entries
as bind sources (`[mount] sources`).

Options: `readOnly: true` binds it read-only.
"""

import os
import re

from flex_driver import Capabilities, Driver, DriverError, Options, config, export, log, mounts

# The volume names a directory may have: one path component, never `.` or `..`.
VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def volume_name(options: Options) -> str:
    name = options.pv_or_volume_name
    if name is None:
        raise DriverError("no volume name (kubernetes.io/pvOrVolumeName) in the options")
    if not VOLUME_NAME.fullmatch(name):
        raise DriverError(f"volume name {name!r} is not a valid directory name")
    return name


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


Verbs = export(HostPath)

"""`{{name}}`: a memory-backed scratch volume of a fixed size, mounted straight onto the pod's
volume directory. Not attachable: kubelet only calls `init`, `mount` and `unmount`.

Options: `size` (bytes, or a Kubernetes quantity such as `64Mi` or `1G`; default 64Mi, at most
1Ti). `readOnly: true` mounts it read-only; the pod's fsGroup owns the root, set-group-id, so
new files inherit the group.

Every verb is idempotent: kubelet retries everything. A driver never prints (kubelet reads
stdout and stderr as the reply): diagnostics go through `flex_driver.log`.
"""

from flex_driver import Capabilities, Driver, DriverError, Options, export, log, mounts, parse_quantity

DEFAULT_SIZE = 64 << 20
# Larger is almost certainly a typo: tmpfs pages come out of the node's memory.
MAX_SIZE = 1 << 40


def parse_size(text: str) -> int:
    """The tmpfs size in bytes, within 1 byte to 1Ti."""
    size = parse_quantity(text)
    if size > MAX_SIZE:
        raise DriverError(f'size "{text}" is out of range: 1 byte to 1Ti')
    return size


class {{class}}(Driver):
    def init(self) -> Capabilities:
        # statfs on the pod directory reports the tmpfs usage; the driver sets the group
        # itself, at mount time, without a recursive walk.
        return Capabilities(attach=False, supports_metrics=True, fs_group=False)

    def mount(self, target_dir: str, options: Options) -> None:
        text = options.get("size")
        size = DEFAULT_SIZE if text is None else parse_size(text)
        if mounts.is_mountpoint(target_dir):
            log.info(f"{target_dir} is already mounted")
            return
        mount = mounts.Mount("tmpfs", target_dir).fs_type("tmpfs") \
            .option("nosuid").option("nodev").option(f"size={size}") \
            .read_only(options.read_only)
        if options.fs_group is not None:
            mount.option(f"gid={options.fs_group}").option("mode=2775")
        else:
            mount.option("mode=0777")
        mount.mount()
        log.info(f"mounted a {size}-byte tmpfs on {target_dir}")

    def unmount(self, target_dir: str) -> None:
        # kubelet also calls unmount for a directory that is not mounted.
        if mounts.is_mountpoint(target_dir):
            mounts.unmount(target_dir)


# The name componentize-py looks for: the class it exports as flex:volume/verbs.
Verbs = export({{class}})

//! kubelet's directory layout, as its FlexVolume plugin computes it. Shared with the host
//! (`host/src/caps/mounts`), which allows exactly this path as a bind source in `mount`: plain
//! string work, no imports, so both sides compute the same answer.

/// The device mount path kubelet used in `mountdevice` for the volume whose pod directory is
/// `target_dir` (`<root>/pods/<uid>/volumes/<vendor~driver>/<name>` →
/// `<root>/plugins/kubernetes.io/flexvolume/<vendor>/<driver>/mounts/<name>`); `None` when
/// `target_dir` is not a pod volume directory in normal form.
///
/// ```
/// assert_eq!(
///     flex_sdk::kubelet::device_mount_path("/var/lib/kubelet/pods/u1/volumes/acme~disk/pv-1").as_deref(),
///     Some("/var/lib/kubelet/plugins/kubernetes.io/flexvolume/acme/disk/mounts/pv-1"),
/// );
/// ```
pub fn device_mount_path(target_dir: &str) -> Option<String> {
    let parts: Vec<&str> = target_dir
        .strip_suffix('/')
        .unwrap_or(target_dir)
        .split('/')
        .collect();
    let n = parts.len();
    let normal = parts.first() == Some(&"")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != "..");
    if !normal || n < 6 || parts[n - 5] != "pods" || parts[n - 3] != "volumes" {
        return None;
    }
    let (vendor, driver) = parts[n - 2].split_once('~')?;
    let root = parts[..n - 5].join("/");
    Some(format!(
        "{root}/plugins/kubernetes.io/flexvolume/{vendor}/{driver}/mounts/{}",
        parts[n - 1]
    ))
}

/// The volume name in a device mount path, as `unmountdevice` receives it (its only argument):
/// `<root>/plugins/kubernetes.io/flexvolume/<vendor>/<driver>/mounts/<name>` → `<name>` (the
/// PV name, or the inline volume's name). `None` when the path is not absolute, not in normal
/// form (no empty, `.` or `..` component; one trailing `/` is allowed) or not of that shape.
///
/// ```
/// use flex_sdk::kubelet::volume_name_of_device_mount_path as name;
///
/// let dmp = "/var/lib/kubelet/plugins/kubernetes.io/flexvolume/flex/loop/mounts/pv-1";
/// assert_eq!(name(dmp), Some("pv-1"));
/// assert_eq!(name(&format!("{dmp}/")), Some("pv-1"));
/// // The inverse of `device_mount_path`, for any kubelet root.
/// let pod_dir = "/k/pods/u1/volumes/acme~disk/data";
/// let dmp = flex_sdk::kubelet::device_mount_path(pod_dir).unwrap();
/// assert_eq!(name(&dmp), Some("data"));
///
/// for bad in [
///     "",
///     "pv-1",
///     "var/lib/kubelet/plugins/kubernetes.io/flexvolume/flex/loop/mounts/pv-1",
///     "/var/lib/kubelet/plugins/kubernetes.io/flexvolume/flex/loop/mounts/..",
///     "/var/lib/kubelet/plugins/kubernetes.io/flexvolume/flex/loop/mounts/../pv-1",
///     "/var/lib/kubelet/plugins/kubernetes.io/flexvolume/flex//loop/mounts/pv-1",
///     "/var/lib/kubelet/plugins/kubernetes.io/flexvolume/loop/mounts/pv-1",
///     "/var/lib/kubelet/plugins/kubernetes.io/flexvolume/flex/loop/mounts/pv-1/x",
///     "/var/lib/kubelet/plugins/kubernetes.io/flexvolume/flex/loop/mounts/",
///     "/var/lib/kubelet/pods/u1/volumes/flex~loop/pv-1",
/// ] {
///     assert_eq!(name(bad), None, "{bad:?}");
/// }
/// ```
// The host includes this file for `device_mount_path` alone.
#[allow(dead_code)]
pub fn volume_name_of_device_mount_path(device_mount_path: &str) -> Option<&str> {
    let path = device_mount_path
        .strip_suffix('/')
        .unwrap_or(device_mount_path);
    let parts: Vec<&str> = path.split('/').collect();
    let n = parts.len();
    let normal = parts.first() == Some(&"")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != "..");
    let shape = n >= 8
        && parts[n - 7..n - 4] == ["plugins", "kubernetes.io", "flexvolume"]
        && parts[n - 2] == "mounts";
    (normal && shape).then(|| parts[n - 1])
}

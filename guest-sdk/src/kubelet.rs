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

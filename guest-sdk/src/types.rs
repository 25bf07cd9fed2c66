//! Defaults, builders and accessors for the WIT records (`Capabilities`, `Options`, `Secret`).

use crate::{Capabilities, Options, Secret};

impl Default for Capabilities {
    /// kubelet's own defaults, except `attach`, which defaults to false here: a driver that
    /// does not implement attach must say so, or pods wait for an attach that never comes.
    ///
    /// ```
    /// let caps = flex_sdk::Capabilities::default();
    /// assert!(!caps.attach && caps.selinux_relabel && caps.fs_group);
    /// assert!(!caps.supports_metrics && !caps.requires_fs_resize);
    /// ```
    fn default() -> Self {
        Capabilities {
            attach: false,
            selinux_relabel: true,
            supports_metrics: false,
            fs_group: true,
            requires_fs_resize: false,
        }
    }
}

impl Default for Options {
    /// No options at all: what kubelet's JSON parses to when every well-known key is empty
    /// and the volume has no `options`. Start here in tests and add what the verb needs with
    /// the `with_*` methods.
    fn default() -> Self {
        Options {
            fs_type: None,
            read_only: false,
            pv_or_volume_name: None,
            pod_name: None,
            pod_namespace: None,
            pod_uid: None,
            service_account_name: None,
            fs_group: None,
            secrets: Vec::new(),
            extra: Vec::new(),
        }
    }
}

/// Builders, for tests: what kubelet's JSON would carry.
///
/// ```
/// use flex_sdk::Options;
///
/// let options = Options::default()
///     .with_pv_or_volume_name("pv-1")
///     .with_fs_type("ext4")
///     .with_extra("size", "8m")
///     .with_secret("password", "hunter2");
/// assert_eq!(options.fs_type.as_deref(), Some("ext4"));
/// assert_eq!(options.get("size"), Some("8m"));
/// assert_eq!(options.secret("password"), Some(&b"hunter2"[..]));
/// ```
impl Options {
    /// `kubernetes.io/fsType`.
    pub fn with_fs_type(mut self, fs_type: impl Into<String>) -> Self {
        self.fs_type = Some(fs_type.into());
        self
    }

    /// `kubernetes.io/readwrite`: `ro` when `read_only`.
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// `kubernetes.io/pvOrVolumeName`: the PV name, or the pod's volume name for an inline
    /// volume.
    pub fn with_pv_or_volume_name(mut self, name: impl Into<String>) -> Self {
        self.pv_or_volume_name = Some(name.into());
        self
    }

    /// `kubernetes.io/pod.name`, `kubernetes.io/pod.namespace` and `kubernetes.io/pod.uid`
    /// (kubelet sends them to `mount` only).
    pub fn with_pod(
        mut self,
        name: impl Into<String>,
        namespace: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        self.pod_name = Some(name.into());
        self.pod_namespace = Some(namespace.into());
        self.pod_uid = Some(uid.into());
        self
    }

    /// `kubernetes.io/serviceAccount.name` (`mount` only).
    pub fn with_service_account_name(mut self, name: impl Into<String>) -> Self {
        self.service_account_name = Some(name.into());
        self
    }

    /// `kubernetes.io/mounterArgs.FsGroup`: the pod's fsGroup (`mount` only).
    pub fn with_fs_group(mut self, gid: u32) -> Self {
        self.fs_group = Some(gid);
        self
    }

    /// A `kubernetes.io/secret/<name>` option, already decoded (`mount` only). Replaces a
    /// secret of the same name.
    pub fn with_secret(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        let secret = Secret::new(name, value);
        self.secrets.retain(|s| s.name != secret.name);
        self.secrets.push(secret);
        self
    }

    /// A driver-specific option (the volume's `options`, or a StorageClass parameter or
    /// `requestBytes` for `provision`). Replaces an option of the same key.
    pub fn with_extra(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        let value = value.into();
        match self.extra.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.extra.push((key, value)),
        }
        self
    }

    /// A driver-specific option (the volume's `options`, or a StorageClass parameter).
    ///
    /// ```
    /// let options = flex_sdk::Options::default().with_extra("size", "1Gi");
    /// assert_eq!(options.get("size"), Some("1Gi"));
    /// assert_eq!(options.get("mode"), None);
    /// ```
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A secret from the volume's `secretRef` (only `mount` receives secrets).
    ///
    /// ```
    /// let options = flex_sdk::Options::default().with_secret("token", [1, 2, 3]);
    /// assert_eq!(options.secret("token"), Some(&[1, 2, 3][..]));
    /// ```
    pub fn secret(&self, name: &str) -> Option<&[u8]> {
        self.secrets
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.value.as_slice())
    }
}

impl Secret {
    /// A secret named `name` (the part after `kubernetes.io/secret/`) with its decoded value.
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Secret {
            name: name.into(),
            value: value.into(),
        }
    }
}

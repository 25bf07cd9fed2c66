//! Defaults, builders and accessors for the WIT records (`Capabilities`, `Options`, `Secret`,
//! and provisioning's `ProvisionRequest`, `Provisioned`, `ProvisionerInfo`).

use crate::{
    AccessMode, Capabilities, Options, ProvisionRequest, Provisioned, ProvisionerInfo, Result,
    Secret, failure,
};

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

/// The value of `key` in a list of option pairs (the first one), such as the `options`
/// [`Provisioner::delete`](crate::Provisioner::delete) receives.
///
/// ```
/// let options = vec![("volumeID".to_string(), "vol-1".to_string())];
/// assert_eq!(flex_sdk::option(&options, "volumeID"), Some("vol-1"));
/// assert_eq!(flex_sdk::option(&options, "fsType"), None);
/// ```
pub fn option<'a>(options: &'a [(String, String)], key: &str) -> Option<&'a str> {
    options
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Replaces the value of `key`, or appends the pair.
fn set(options: &mut Vec<(String, String)>, key: String, value: String) {
    match options.iter_mut().find(|(k, _)| *k == key) {
        Some((_, v)) => *v = value,
        None => options.push((key, value)),
    }
}

impl AccessMode {
    /// The Kubernetes spelling: `ReadWriteOnce`, `ReadOnlyMany`, `ReadWriteMany`.
    ///
    /// ```
    /// assert_eq!(flex_sdk::AccessMode::ReadWriteOnce.kubernetes_name(), "ReadWriteOnce");
    /// ```
    pub fn kubernetes_name(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadOnlyMany => "ReadOnlyMany",
            AccessMode::ReadWriteMany => "ReadWriteMany",
        }
    }
}

impl ProvisionerInfo {
    /// The access modes and StorageClass parameter keys a driver supports.
    ///
    /// ```
    /// use flex_sdk::{AccessMode, ProvisionerInfo};
    ///
    /// let info = ProvisionerInfo::new([AccessMode::ReadWriteOnce], ["type", "fsType"]);
    /// assert_eq!(info.access_modes, [AccessMode::ReadWriteOnce]);
    /// assert_eq!(info.parameters, ["type", "fsType"]);
    /// ```
    pub fn new<S: Into<String>>(
        access_modes: impl IntoIterator<Item = AccessMode>,
        parameters: impl IntoIterator<Item = S>,
    ) -> Self {
        ProvisionerInfo {
            access_modes: access_modes.into_iter().collect(),
            parameters: parameters.into_iter().map(Into::into).collect(),
            node_local: false,
        }
    }

    /// Volumes that live on the provisioner's own machine (files, local disks): their PVs
    /// get a node affinity to it.
    ///
    /// ```
    /// use flex_sdk::{AccessMode, ProvisionerInfo};
    ///
    /// let info = ProvisionerInfo::new([AccessMode::ReadWriteOnce], ["fsType"]).node_local();
    /// assert!(info.node_local);
    /// ```
    pub fn node_local(self) -> Self {
        ProvisionerInfo {
            node_local: true,
            ..self
        }
    }
}

/// Builders, for tests: what `flex provisioner` would send for a claim. A new request asks
/// for `ReadWriteOnce`, from claim `claim` in namespace `default`, with no limit, parameters,
/// fsType, annotations or selected node.
///
/// ```
/// use flex_sdk::{AccessMode, ProvisionRequest};
///
/// let request = ProvisionRequest::new("pvc-1", 1 << 30)
///     .with_limit_bytes(2 << 30)
///     .with_parameter("type", "gp3")
///     .with_fs_type("xfs")
///     .with_claim("data", "web")
///     .with_selected_node("node-1");
/// assert_eq!(request.parameter("type"), Some("gp3"));
/// assert_eq!(request.parameter("fsType"), Some("xfs")); // also a parameter, as in the StorageClass
/// assert_eq!(request.access_modes, [AccessMode::ReadWriteOnce]);
/// assert_eq!(request.rounded_size(1 << 30), Ok(1 << 30));
/// ```
impl ProvisionRequest {
    /// A request for volume `name` (the PV name, `pvc-<claim uid>`) of `requested_bytes`.
    pub fn new(name: impl Into<String>, requested_bytes: u64) -> Self {
        ProvisionRequest {
            name: name.into(),
            requested_bytes,
            limit_bytes: None,
            parameters: Vec::new(),
            access_modes: vec![AccessMode::ReadWriteOnce],
            fs_type: None,
            claim_name: "claim".into(),
            claim_namespace: "default".into(),
            claim_annotations: Vec::new(),
            selected_node: None,
        }
    }

    /// The claim's `resources.limits.storage`.
    pub fn with_limit_bytes(mut self, limit: u64) -> Self {
        self.limit_bytes = Some(limit);
        self
    }

    /// A StorageClass parameter. Replaces a parameter of the same key.
    pub fn with_parameter(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        set(&mut self.parameters, key.into(), value.into());
        self
    }

    /// The StorageClass's `fsType` parameter: [`ProvisionRequest::fs_type`], and in the
    /// parameters as the controller sends it.
    pub fn with_fs_type(mut self, fs_type: impl Into<String>) -> Self {
        let fs_type = fs_type.into();
        self.fs_type = Some(fs_type.clone());
        set(&mut self.parameters, "fsType".into(), fs_type);
        self
    }

    /// The claim's access modes (replacing the default `ReadWriteOnce`).
    pub fn with_access_modes(mut self, modes: impl IntoIterator<Item = AccessMode>) -> Self {
        self.access_modes = modes.into_iter().collect();
        self
    }

    /// The claim's name and namespace.
    pub fn with_claim(mut self, name: impl Into<String>, namespace: impl Into<String>) -> Self {
        self.claim_name = name.into();
        self.claim_namespace = namespace.into();
        self
    }

    /// An annotation of the claim. Replaces one of the same key.
    pub fn with_claim_annotation(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        set(&mut self.claim_annotations, key.into(), value.into());
        self
    }

    /// The node the scheduler chose (`volumeBindingMode: WaitForFirstConsumer`).
    pub fn with_selected_node(mut self, node: impl Into<String>) -> Self {
        self.selected_node = Some(node.into());
        self
    }

    /// A StorageClass parameter.
    pub fn parameter(&self, key: &str) -> Option<&str> {
        option(&self.parameters, key)
    }

    /// The first parameter whose key is not in `known`, to refuse it before creating
    /// anything (the controller already refuses keys [`Provisioner::describe`] does not
    /// list; a driver checks again, as it cannot know which controller calls it).
    ///
    /// [`Provisioner::describe`]: crate::Provisioner::describe
    ///
    /// ```
    /// let request = flex_sdk::ProvisionRequest::new("pvc-1", 1).with_parameter("colour", "red");
    /// assert_eq!(request.unknown_parameter(&["type"]), Some("colour"));
    /// assert_eq!(request.unknown_parameter(&["type", "colour"]), None);
    /// ```
    pub fn unknown_parameter(&self, known: &[&str]) -> Option<&str> {
        self.parameters
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| !known.contains(k))
    }

    /// The file system the StorageClass asks for: its `fsType` (the request's field or the
    /// parameter, which must agree), one of `supported`; `None` when it names none.
    ///
    /// ```
    /// use flex_sdk::ProvisionRequest;
    ///
    /// let request = ProvisionRequest::new("pvc-1", 1).with_parameter("fsType", "xfs");
    /// assert_eq!(request.file_system(&["ext4", "xfs"]), Ok(Some("xfs")));
    /// assert!(request.file_system(&["ext4"]).is_err());
    /// assert_eq!(ProvisionRequest::new("pvc-1", 1).file_system(&["ext4"]), Ok(None));
    /// ```
    pub fn file_system(&self, supported: &[&str]) -> crate::Result<Option<&str>> {
        let parameter = self.parameter("fsType").filter(|fs| !fs.is_empty());
        let field = self.fs_type.as_deref().filter(|fs| !fs.is_empty());
        let fs = match (field, parameter) {
            (Some(a), Some(b)) if a != b => {
                return Err(crate::failure(format!(
                    "fsType {a:?} and the parameter fsType {b:?} differ"
                )));
            }
            (a, b) => a.or(b),
        };
        match fs {
            Some(fs) if !supported.contains(&fs) => Err(crate::failure(format!(
                "invalid parameter fsType {fs:?} ({})",
                supported.join(" or ")
            ))),
            fs => Ok(fs),
        }
    }

    /// The size to allocate: [`ProvisionRequest::requested_bytes`] rounded up to a whole
    /// number of `granularity` bytes (at least one), and a failure when that exceeds
    /// [`ProvisionRequest::limit_bytes`] or a `u64`.
    ///
    /// ```
    /// use flex_sdk::ProvisionRequest;
    ///
    /// const GIB: u64 = 1 << 30;
    /// assert_eq!(ProvisionRequest::new("pvc-1", 1).rounded_size(GIB), Ok(GIB));
    /// assert_eq!(ProvisionRequest::new("pvc-1", GIB + 1).rounded_size(GIB), Ok(2 * GIB));
    /// let limited = ProvisionRequest::new("pvc-1", GIB + 1).with_limit_bytes(GIB + GIB / 2);
    /// assert!(limited.rounded_size(GIB).is_err());
    /// ```
    pub fn rounded_size(&self, granularity: u64) -> Result<u64> {
        let granularity = granularity.max(1);
        let size = self
            .requested_bytes
            .max(1)
            .div_ceil(granularity)
            .checked_mul(granularity)
            .ok_or_else(|| {
                failure(format!(
                    "requested size {} bytes is out of range",
                    self.requested_bytes
                ))
            })?;
        match self.limit_bytes {
            Some(limit) if size > limit => Err(failure(format!(
                "claim {}/{} requests {} bytes, which rounds up to {size} bytes (a whole number \
                 of {granularity}-byte units), above its limit of {limit} bytes",
                self.claim_namespace, self.claim_name, self.requested_bytes
            ))),
            _ => Ok(size),
        }
    }
}

impl Provisioned {
    /// A provisioned volume of `capacity_bytes` (its actual size), with no options yet.
    ///
    /// ```
    /// let provisioned = flex_sdk::Provisioned::new(1 << 30)
    ///     .with_option("volumeID", "vol-1")
    ///     .with_option("fsType", "ext4");
    /// assert_eq!(provisioned.option("volumeID"), Some("vol-1"));
    /// assert_eq!(provisioned.options.len(), 2);
    /// ```
    pub fn new(capacity_bytes: u64) -> Self {
        Provisioned {
            capacity_bytes,
            options: Vec::new(),
        }
    }

    /// An option recorded in the PV's `flexVolume.options`. Replaces one of the same key.
    pub fn with_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        set(&mut self.options, key.into(), value.into());
        self
    }

    /// A recorded option.
    pub fn option(&self, key: &str) -> Option<&str> {
        option(&self.options, key)
    }
}

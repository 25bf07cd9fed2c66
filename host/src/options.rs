//! The option JSON kubelet passes (a flat object of strings) parsed into the typed WIT record.

use crate::bindings::{Options, Secret};
use base64::Engine as _;
use std::collections::BTreeMap;

const FS_TYPE: &str = "kubernetes.io/fsType";
const READ_WRITE: &str = "kubernetes.io/readwrite";
const PV_OR_VOLUME_NAME: &str = "kubernetes.io/pvOrVolumeName";
const POD_NAME: &str = "kubernetes.io/pod.name";
const POD_NAMESPACE: &str = "kubernetes.io/pod.namespace";
const POD_UID: &str = "kubernetes.io/pod.uid";
const SERVICE_ACCOUNT: &str = "kubernetes.io/serviceAccount.name";
/// kubelet ≥ 1.15 sends the first, older kubelets the second.
const FS_GROUP_KEYS: [&str; 2] = ["kubernetes.io/mounterArgs.FsGroup", "kubernetes.io/fsGroup"];
const SECRET_PREFIX: &str = "kubernetes.io/secret/";

/// Whether `kubernetes.io/secret/*` keys reach the driver. kubelet sends them only to `mount`;
/// the host drops them anywhere else so a driver never sees credentials it should not have.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    Keep,
    Drop,
}

/// Parses kubelet's option JSON. Errors name the offending key, never a secret's value.
pub fn parse(json: &str, secrets: Secrets) -> Result<Options, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("invalid options JSON: {e}"))?;
    let serde_json::Value::Object(object) = value else {
        return Err("invalid options JSON: expected an object of strings".into());
    };
    let mut map = BTreeMap::new();
    for (key, value) in object {
        match value {
            serde_json::Value::String(s) => map.insert(key, s),
            other => {
                return Err(format!(
                    "invalid options JSON: option {key:?} must be a string, not {}",
                    json_kind(&other)
                ));
            }
        };
    }

    let mut take = |key: &str| map.remove(key).filter(|v| !v.is_empty());
    let read_only = match take(READ_WRITE).as_deref() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            return Err(format!(
                "option {READ_WRITE:?} must be \"ro\" or \"rw\", not {other:?}"
            ));
        }
    };
    let mut fs_group = None;
    for key in FS_GROUP_KEYS {
        if let Some(text) = take(key) {
            let gid = text
                .parse::<u32>()
                .map_err(|_| format!("option {key:?} must be a group id, not {text:?}"))?;
            fs_group.get_or_insert(gid);
        }
    }
    let mut options = Options {
        fs_type: take(FS_TYPE),
        read_only,
        pv_or_volume_name: take(PV_OR_VOLUME_NAME),
        pod_name: take(POD_NAME),
        pod_namespace: take(POD_NAMESPACE),
        pod_uid: take(POD_UID),
        service_account_name: take(SERVICE_ACCOUNT),
        fs_group,
        secrets: Vec::new(),
        extra: Vec::new(),
    };
    for (key, value) in map {
        match key.strip_prefix(SECRET_PREFIX) {
            Some(name) if secrets == Secrets::Keep => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.as_bytes())
                    .map_err(|_| format!("secret option {key:?} is not valid base64"))?;
                options.secrets.push(Secret {
                    name: name.into(),
                    value: bytes,
                });
            }
            Some(_) => {}
            None => options.extra.push((key, value)),
        }
    }
    Ok(options)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mount example from the FlexVolume protocol notes (§5), as kubelet encodes it.
    const MOUNT_JSON: &str = r#"{"kubernetes.io/fsType":"ext4","kubernetes.io/mounterArgs.FsGroup":"2000","kubernetes.io/pod.name":"web-0","kubernetes.io/pod.namespace":"default","kubernetes.io/pod.uid":"8d3c1f2e-0000-4000-8000-000000000001","kubernetes.io/pvOrVolumeName":"pv-data","kubernetes.io/readwrite":"rw","kubernetes.io/secret/password":"czNjcjN0","kubernetes.io/secret/username":"YWRtaW4=","kubernetes.io/serviceAccount.name":"default","server":"10.0.0.5","share":"/exports/data\u0026x"}"#;

    #[test]
    fn parses_every_well_known_key() {
        let o = parse(MOUNT_JSON, Secrets::Keep).unwrap();
        assert_eq!(o.fs_type.as_deref(), Some("ext4"));
        assert!(!o.read_only);
        assert_eq!(o.pv_or_volume_name.as_deref(), Some("pv-data"));
        assert_eq!(o.pod_name.as_deref(), Some("web-0"));
        assert_eq!(o.pod_namespace.as_deref(), Some("default"));
        assert_eq!(
            o.pod_uid.as_deref(),
            Some("8d3c1f2e-0000-4000-8000-000000000001")
        );
        assert_eq!(o.service_account_name.as_deref(), Some("default"));
        assert_eq!(o.fs_group, Some(2000));
        let secrets: Vec<_> = o
            .secrets
            .iter()
            .map(|s| (s.name.as_str(), s.value.as_slice()))
            .collect();
        assert_eq!(
            secrets,
            [("password", &b"s3cr3t"[..]), ("username", &b"admin"[..])]
        );
        assert_eq!(
            o.extra,
            [
                ("server".into(), "10.0.0.5".into()),
                ("share".into(), "/exports/data&x".into())
            ]
        );
    }

    #[test]
    fn secrets_are_dropped_outside_mount() {
        let o = parse(MOUNT_JSON, Secrets::Drop).unwrap();
        assert!(o.secrets.is_empty());
        assert!(o.extra.iter().all(|(k, _)| !k.starts_with(SECRET_PREFIX)));
    }

    #[test]
    fn inline_volume_and_old_fs_group_key() {
        let o = parse(
            r#"{"kubernetes.io/fsType":"","kubernetes.io/pvOrVolumeName":"vol1","kubernetes.io/readwrite":"ro","kubernetes.io/fsGroup":"7"}"#,
            Secrets::Keep,
        )
        .unwrap();
        assert_eq!(o.fs_type, None);
        assert!(o.read_only);
        assert_eq!(o.fs_group, Some(7));
    }

    #[test]
    fn rejects_bad_input_with_the_key_named() {
        for (json, expected) in [
            ("", "invalid options JSON"),
            ("{", "invalid options JSON"),
            ("[]", "expected an object"),
            (r#"{"size":64}"#, "\"size\" must be a string, not a number"),
            (r#"{"a":null}"#, "not null"),
            (r#"{"kubernetes.io/readwrite":"yes"}"#, "readwrite"),
            (r#"{"kubernetes.io/mounterArgs.FsGroup":"-1"}"#, "group id"),
            (
                r#"{"kubernetes.io/secret/pw":"!!"}"#,
                "\"kubernetes.io/secret/pw\" is not valid base64",
            ),
        ] {
            let err = parse(json, Secrets::Keep).unwrap_err();
            assert!(err.contains(expected), "{json}: {err}");
        }
    }
}

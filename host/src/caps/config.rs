//! `flex:volume/config`: the policy's `[config]` table, handed to the driver as written.
//! Values are readable by the driver in every verb. A table may hold a credential (the EBS
//! driver's access key): then the policy file must not be readable by other users
//! ([`check_exposure`]).

use crate::bindings::flex::volume::config::Host;
use std::collections::BTreeMap;
use std::path::Path;

pub struct Config(pub BTreeMap<String, String>);

impl Host for Config {
    fn get(&mut self, key: String) -> Option<String> {
        self.0.get(&key).cloned()
    }

    fn get_all(&mut self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// The `[config]` keys whose values look like credentials (`secret_access_key`, `token`...).
pub fn secret_keys(config: &BTreeMap<String, String>) -> Vec<&str> {
    config
        .keys()
        .filter(|key| crate::audit::secret_looking(key))
        .map(String::as_str)
        .collect()
}

/// Why a policy file with secret-looking `[config]` values must not be used as it is: any
/// user can read it (`mode` from the opened file). `0600`, or `0640` for root's group, keeps
/// the secret root's.
pub fn check_exposure(
    path: &Path,
    mode: u32,
    config: &BTreeMap<String, String>,
) -> Result<(), String> {
    let keys = secret_keys(config);
    if mode & 0o004 == 0 || keys.is_empty() {
        return Ok(());
    }
    Err(format!(
        "policy {} is readable by every user (mode {:04o}) and its [config] holds \
         secret-looking values ({}): make it root-only (chmod 0600 {0})",
        path.display(),
        mode & 0o7777,
        keys.join(", "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_from_the_policy_table_only() {
        let policy = crate::policy::parse(
            "[config]\nendpoint = \"http://127.0.0.1:5000\"\nregion = \"eu-west-1\"",
            std::path::Path::new("p.toml"),
        )
        .unwrap();
        let mut config = Config(policy.config);
        assert_eq!(
            config.get("endpoint".into()).as_deref(),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(config.get("HOME".into()), None);
        assert_eq!(config.get_all().len(), 2);
    }

    #[test]
    fn secrets_in_a_world_readable_policy_are_refused() {
        let config: BTreeMap<String, String> = [
            ("region", "eu-west-1"),
            ("access_key_id", "AKIA"),
            ("secret_access_key", "wJalr"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let path = Path::new("/etc/flex/policy/flex~ebs.toml");
        assert_eq!(secret_keys(&config), ["access_key_id", "secret_access_key"]);
        let err = check_exposure(path, 0o100644, &config).unwrap_err();
        assert!(err.contains("readable by every user (mode 0644)"), "{err}");
        assert!(
            err.contains("secret_access_key") && !err.contains("wJalr"),
            "{err}"
        );
        for mode in [0o600, 0o640, 0o400] {
            assert_eq!(check_exposure(path, mode, &config), Ok(()));
        }
        let plain: BTreeMap<String, String> = [("region".to_string(), "x".to_string())].into();
        assert_eq!(check_exposure(path, 0o644, &plain), Ok(()));
    }
}

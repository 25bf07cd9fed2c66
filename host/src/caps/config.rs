//! `flex:volume/config`: the policy's `[config]` table, handed to the driver as written.
//! For settings, not credentials: values are readable by the driver in every verb.

use crate::bindings::flex::volume::config::Host;
use std::collections::BTreeMap;

pub struct Config(pub BTreeMap<String, String>);

impl Host for Config {
    fn get(&mut self, key: String) -> Option<String> {
        self.0.get(&key).cloned()
    }

    fn get_all(&mut self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
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
}

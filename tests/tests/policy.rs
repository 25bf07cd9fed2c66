//! Policy tools and whole-policy rules, through the real binary: the component digest, every
//! shipped policy valid, `flex inspect`, and invalid capability tables failing every verb.

use flex_tests::*;

fn sha256_of(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

#[test]
fn a_component_with_another_digest_is_refused() {
    let node = Node::new();
    let component = guest("flex_tmpfs");
    let driver = node.install("flex~tmpfs", &component);
    let policy = shipped_policy("tmpfs");
    node.set_policy(
        "flex~tmpfs",
        &format!("digest = \"{}\"\n{policy}", sha256_of(&component)),
    );
    node.run(&driver, &["init"]).success();

    let other = format!("sha256:{}", "0".repeat(64));
    node.set_policy("flex~tmpfs", &format!("digest = \"{other}\"\n{policy}"));
    let message = node.run(&driver, &["init"]).failure();
    assert!(
        message.contains("refusing driver component") && message.contains(&other),
        "{message}"
    );
}

#[test]
fn every_shipped_policy_is_valid() {
    let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let mut checked = 0;
    for entry in std::fs::read_dir(plugins).unwrap().flatten() {
        let policy = entry.path().join("policy.toml");
        if !policy.exists() {
            continue;
        }
        let node = Node::new();
        let out = node.run(
            &flex_binary(),
            &["policy", "check", policy.to_str().unwrap()],
        );
        assert_eq!(out.code, 0, "{}: {}", policy.display(), out.stdout);
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} shipped policies found");
}

#[test]
fn inspect_shows_imports_and_what_the_policy_grants() {
    let node = Node::new();
    let policy = node.path("policy/p.toml");
    std::fs::write(
        &policy,
        format!(
            "{}\n[[exec.programs]]\npath = \"/usr/bin/true\"\nargs = []\n",
            shipped_policy("tmpfs")
        ),
    )
    .unwrap();
    let component = guest("flex_hostile");
    let out = node.run(
        &flex_binary(),
        &[
            "inspect",
            component.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stdout);
    let line = |import: &str| {
        out.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(import))
            .unwrap_or_else(|| panic!("no {import} line in:\n{}", out.stdout))
            .to_string()
    };
    assert!(line("flex:volume/mounts").contains("granted"));
    assert!(line("flex:volume/exec").contains("granted"));
    assert!(line("flex:volume/block").contains("denied"));
    assert!(line("wasi:http/outgoing-handler").contains("denied"));
    assert!(line("wasi:filesystem/preopens").contains("denied"));
    assert!(out.stdout.contains("exports:\n  flex:volume/verbs"));

    let tmpfs = guest("flex_tmpfs");
    let out = node.run(
        &flex_binary(),
        &[
            "inspect",
            tmpfs.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    assert!(
        out.stdout
            .contains("unused grants (the component never imports them): [exec]"),
        "{}",
        out.stdout
    );
    let out = node.run(&flex_binary(), &["inspect", policy.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.stdout);
}

#[test]
fn invalid_capability_tables_fail_every_verb() {
    let node = Node::new();
    let driver = node.install("flex~tmpfs", &guest("flex_tmpfs"));
    for (table, problem) in [
        ("[http]\ndestinations = [\"ftp://x\"]", "http.destinations"),
        ("[http]\naddresses = [\"10.0.0.0/99\"]", "http.addresses"),
        (
            "[[exec.programs]]\npath = \"sh\"\nargs = []",
            "not a normalized absolute path",
        ),
        ("[exec]\nprograms = [\"/bin/true\"]", "[[exec.programs]]"),
        ("[exec]\nenvironment = []", "unknown field `environment`"),
        ("[block]\nimage_dir = \"relative\"", "block.image_dir"),
        ("[state]\ndir = \"relative\"", "state.dir"),
        ("digest = \"md5:abc\"", "digest must be sha256"),
        ("[config]\nendpoint = 5", "invalid type"),
    ] {
        node.set_policy("flex~tmpfs", table);
        for args in [&["init"][..], &["unmount", "/nonexistent"]] {
            let message = node.run(&driver, args).failure();
            assert!(
                message.contains("flex~tmpfs.toml") && message.contains(problem),
                "{table}: {message}"
            );
        }
    }
}

#[test]
fn policy_check_never_prints_a_credential() {
    let node = Node::new();
    let file = node.path("policy/cloud.toml");
    std::fs::write(
        &file,
        "[config]\nendpoint = \"https://ec2.example\"\nsecret_access_key = \"wJalrXUtnFEMI\"\n",
    )
    .unwrap();
    let out = node.run(&flex_binary(), &["policy", "check", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("https://ec2.example"), "{}", out.stdout);
    assert!(!out.stdout.contains("wJalrXUtnFEMI"), "{}", out.stdout);
    assert!(out.stdout.contains("<redacted>"), "{}", out.stdout);
}

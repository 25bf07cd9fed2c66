//! Resources beyond linear memory: tables, instances, the state directory, and dry runs that
//! must perform nothing. Each attack fails its own call with a message naming the limit and
//! leaves the node as it was.

use flex_tests::*;
use std::path::{Path, PathBuf};

const DRIVER: &str = "test~hostile";

fn node_with(component: &Path, policy: &str) -> (Node, PathBuf) {
    require_root();
    let node = Node::new();
    let driver = node.install(DRIVER, component);
    node.set_policy(DRIVER, policy);
    (node, driver)
}

/// A component written in the text format, saved where a test can install it.
fn component(node_dir: &Path, name: &str, text: &str) -> PathBuf {
    let bytes = wat::parse_str(text).expect("valid component text");
    let path = node_dir.join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A component whose start code grows a table by `elements` and traps if that fails.
fn table_growth(dir: &Path, elements: u32) -> PathBuf {
    let text = format!(
        r#"(component
             (core module $m
               (table $t 1 funcref)
               (func $start
                 (if (i32.eq (table.grow $t (ref.null func) (i32.const {elements})) (i32.const -1))
                   (then unreachable)))
               (start $start))
             (core instance (instantiate $m)))"#
    );
    component(dir, &format!("grow-{elements}"), &text)
}

fn init(node: &Node, driver: &Path) -> Output {
    node.run(driver, &["init"])
}

/// Peak RSS of every waited-for child so far, in KiB.
fn children_max_rss_kib() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { nix::libc::getrusage(nix::libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss
}

#[test]
fn a_table_grown_to_a_billion_elements_is_refused_under_a_small_memory_limit() {
    let scratch = tempfile::tempdir().unwrap();
    let grow = table_growth(scratch.path(), 1_000_000_000);
    let (node, driver) = node_with(&grow, "[limits]\nmemory_mib = 64");
    let message = init(&node, &driver).failure();
    assert!(message.contains("limits.table_elements"), "{message}");
    assert!(message.contains("1000000001 elements"), "{message}");
    assert!(
        children_max_rss_kib() < 100 * 1024,
        "a refused table must not cost host memory: {} KiB",
        children_max_rss_kib()
    );
    // A policy may raise the limit, within its ceiling only.
    node.set_policy(DRIVER, "[limits]\ntable_elements = 100000000000");
    let message = init(&node, &driver).failure();
    assert!(
        message.contains("limits.table_elements must be between"),
        "{message}"
    );
}

#[test]
fn tables_within_the_limit_still_work() {
    let scratch = tempfile::tempdir().unwrap();
    let small = table_growth(scratch.path(), 1000);
    let (node, driver) = node_with(&small, "[limits]\ntable_elements = 2000");
    // The start function succeeds; the call then fails only because this component exports no
    // verbs, which is a different, clear error.
    let message = init(&node, &driver).failure();
    assert!(!message.contains("limits."), "{message}");
}

#[test]
fn instances_tables_and_memories_per_store_are_counted() {
    let scratch = tempfile::tempdir().unwrap();
    let many = component(
        scratch.path(),
        "many",
        r#"(component
             (core module $m (memory 1) (table 1 funcref))
             (core instance (instantiate $m))
             (core instance (instantiate $m))
             (core instance (instantiate $m)))"#,
    );
    for (limit, name) in [
        ("instances", "limits.instances"),
        ("memories", "limits.memories"),
        ("tables", "limits.tables"),
    ] {
        let (node, driver) = node_with(&many, &format!("[limits]\n{limit} = 2"));
        let message = init(&node, &driver).failure();
        assert!(message.contains(name), "{limit}: {message}");
    }
}

fn hostile_with_state(extra: &str) -> (Node, PathBuf, PathBuf) {
    require_root();
    let node = Node::new();
    let driver = node.install(DRIVER, &guest("flex_hostile"));
    let state = node.path("state").join(DRIVER);
    node.set_policy(
        DRIVER,
        &format!("[state]\ndir = \"{}\"\n{extra}", state.display()),
    );
    (node, driver, state)
}

fn fill(node: &Node, driver: &Path, bytes: usize, count: u32, dry_run: bool) -> Output {
    let dir = node.volume_dir(DRIVER, "pod", "vol");
    let json = mount_json(
        "vol",
        false,
        None,
        &[
            ("attack", "state-fill"),
            ("bytes", &bytes.to_string()),
            ("count", &count.to_string()),
        ],
    );
    let mut args = vec!["mount", dir.to_str().unwrap(), json.as_str()];
    if dry_run {
        args.insert(0, "--dry-run");
    }
    node.run(driver, &args)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_state_directory_past_its_size_limit_stops_the_call() {
    let (node, driver, state) = hostile_with_state("[limits]\nstate_bytes = 1048576");
    // 1024 files of 1 MiB: the watchdog stops the call long before all are written.
    let message = fill(&node, &driver, 1 << 20, 1024, false).failure();
    assert!(message.contains("limits.state_bytes"), "{message}");
    let written = dir_bytes(&state);
    println!(
        "state_bytes = 1 MiB: the call had written {} MiB when it was stopped",
        written >> 20
    );
    assert!(
        written < 512 << 20,
        "the call went on writing: {written} bytes"
    );
    // The next call finds the directory over its limit: read-only, and the log says why.
    let message = fill(&node, &driver, 10, 1, false).failure();
    assert!(message.contains("write /state/f0"), "{message}");
    assert!(
        node.log().contains("read-only for this call"),
        "{}",
        node.log()
    );
    assert_eq!(dir_bytes(&state), written, "nothing more was written");
}

#[test]
fn a_state_directory_past_its_file_limit_stops_the_call() {
    let (node, driver, state) = hostile_with_state("[limits]\nstate_files = 50");
    let message = fill(&node, &driver, 1, 1_000_000, false).failure();
    assert!(message.contains("limits.state_files"), "{message}");
    let files = std::fs::read_dir(&state).unwrap().count();
    assert!(files < 1_000_000, "{files} files");
}

#[test]
fn a_dry_run_writes_nothing_to_the_real_state_directory() {
    let (node, driver, state) = hostile_with_state("");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("existing"), "before").unwrap();
    // The driver sees a writable /state, as in a real run...
    let message = fill(&node, &driver, 100, 3, true).failure();
    assert_eq!(message, "wrote 3 files");
    // ...but the real directory is untouched, and no scratch copy is left behind.
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["existing"]);
    let leftovers: Vec<_> = std::fs::read_dir(node.path("state"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".dry-run"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A real run does write.
    assert_eq!(
        fill(&node, &driver, 100, 3, false).failure(),
        "wrote 3 files"
    );
    assert!(state.join("f2").exists());
}

#[test]
fn a_dry_run_mounts_nothing_and_answers_like_a_real_run() {
    require_root();
    let node = Node::new();
    let driver = node.install(DRIVER, &guest("flex_hostile"));
    node.set_policy(DRIVER, &shipped_policy("tmpfs"));
    let dir = node.volume_dir(DRIVER, "pod", "vol");
    let json = mount_json(
        "vol",
        false,
        None,
        &[("attack", "mount-options"), ("options", "size=1m")],
    );
    node.run(
        &driver,
        &["--dry-run", "mount", dir.to_str().unwrap(), &json],
    )
    .success();
    assert!(mounts_at(&dir).is_empty(), "a dry run mounted");
    let decisions: Vec<String> = node
        .audit()
        .iter()
        .map(|l| l["decision"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(decisions, ["would-do"]);
}

//! `flex install` / `flex uninstall` lay a driver out as kubelet expects, atomically.

use flex_tests::*;
use std::os::unix::fs::MetadataExt;

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn install_upgrade_and_uninstall() {
    require_root();
    let node = Node::new();
    let plugins = node.path("plugins");
    let policy = node.path("policy/in.toml");
    std::fs::write(&policy, shipped_policy("tmpfs")).unwrap();
    let flex = flex_binary();
    let tmpfs = guest("flex_tmpfs");
    let install = |component: &std::path::Path| {
        node.run(
            &flex,
            &[
                "install",
                "--plugin-dir",
                plugins.to_str().unwrap(),
                "acme~tmpfs",
                component.to_str().unwrap(),
                "--policy",
                policy.to_str().unwrap(),
            ],
        )
    };
    let out = install(&tmpfs);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out:?}");
    // The compiler's copy is a top-level dot-file: kubelet's prober ignores it.
    assert_eq!(
        listing(&plugins),
        [".flex-compile", "acme~tmpfs"],
        "no staging leftovers"
    );
    let dir = plugins.join("acme~tmpfs");
    // Precompiled into the root-only cache, never into the plugin dir containers share.
    assert_eq!(visible(&dir), ["tmpfs", "tmpfs.wasm"]);
    assert_eq!(versions(&dir), 1);
    let cache = node.cache_dir().metadata().unwrap();
    assert_eq!((cache.uid(), cache.mode() & 0o7777), (0, 0o700));
    let artifacts = node.artifacts();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert_eq!(
        artifact_inode(&artifacts[0]),
        inode(&dir.join("tmpfs.wasm"))
    );
    assert_eq!((artifacts[0].metadata().unwrap().mode() & 0o7777), 0o600);
    assert_eq!(
        std::fs::read_to_string(node.path("policy/acme~tmpfs.toml")).unwrap(),
        shipped_policy("tmpfs")
    );
    node.run(&dir.join("tmpfs"), &["init"]).success();
    assert!(
        !node.log().contains("compiled"),
        "the first call used the installed artifact"
    );
    // A lost (or, after a CPU change, rejected) artifact is rebuilt by the installed driver
    // itself, with the plugin dir's compiler.
    std::fs::remove_file(&artifacts[0]).unwrap();
    node.run(&dir.join("tmpfs"), &["init"]).success();
    assert!(node.log().contains("compiled"), "{}", node.log());
    assert_eq!(
        node.artifacts(),
        artifacts,
        "the artifact was written again"
    );

    // Upgrade while kubelet keeps calling: every call sees a whole driver, old or new.
    let hostile = guest("flex_hostile");
    std::thread::scope(|scope| {
        let caller = scope.spawn(|| {
            for _ in 0..40 {
                node.run(&dir.join("tmpfs"), &["init"]).success();
            }
        });
        for component in [&hostile, &tmpfs, &hostile] {
            assert_eq!(install(component).code, 0);
        }
        caller.join().unwrap();
    });
    assert_eq!(
        std::fs::read(dir.join("tmpfs.wasm")).unwrap(),
        std::fs::read(&hostile).unwrap()
    );
    let reply = node.run(&dir.join("tmpfs"), &["init"]).success();
    assert_eq!(reply["capabilities"]["attach"], false);
    // The replaced components' artifacts went with them (also those a concurrent call
    // compiled while the upgrade removed its component), but for the version before the
    // current one, kept for a call that started on it.
    let mut artifacts: Vec<_> = node.artifacts().iter().map(|a| artifact_inode(a)).collect();
    artifacts.sort();
    let mut expected = vec![
        inode(&dir.join("tmpfs.wasm")),
        inode(&previous_component(&dir)),
    ];
    expected.sort();
    assert_eq!(artifacts, expected, "no stale artifact");
    assert_eq!(visible(&dir), ["tmpfs", "tmpfs.wasm"]);
    assert_eq!(versions(&dir), 2, "{:?}", listing(&dir));
    assert_eq!(listing(&plugins), [".flex-compile", "acme~tmpfs"]);

    uninstall(&node, &plugins, "acme~tmpfs");
    assert!(
        listing(&plugins).is_empty(),
        "the last driver takes the compiler with it"
    );
    assert_eq!(
        node.artifacts(),
        Vec::<std::path::PathBuf>::new(),
        "and its artifact"
    );
}

fn uninstall(node: &Node, plugins: &std::path::Path, name: &str) {
    let plugins = plugins.to_str().unwrap();
    let out = node.run(
        &flex_binary(),
        &["uninstall", "--plugin-dir", plugins, name],
    );
    assert_eq!(out.code, 0, "{out:?}");
}

/// What kubelet's prober considers (it ignores dot-names).
fn visible(dir: &std::path::Path) -> Vec<String> {
    let mut names = listing(dir);
    names.retain(|n| !n.starts_with('.'));
    names
}

fn versions(dir: &std::path::Path) -> usize {
    listing(dir)
        .iter()
        .filter(|n| n.starts_with(".version-"))
        .count()
}

/// The component of the version that is not the current one.
fn previous_component(dir: &std::path::Path) -> std::path::PathBuf {
    let current = std::fs::read_link(dir.join(".current")).unwrap();
    let previous = listing(dir)
        .into_iter()
        .find(|n| n.starts_with(".version-") && std::path::Path::new(n) != current)
        .unwrap();
    dir.join(previous).join("tmpfs.wasm")
}

/// Upgrades while kubelet's prober watches (emulated as kubelet v1.20.2 reads inotify events,
/// `flex_tests::prober`): every install is seen as an update that re-runs `init`, never as the
/// driver's removal, which made a real kubelet drop the driver with its volumes mounted. Also
/// from the first layout (flat files in the driver dir). An uninstall is seen as a removal:
/// the emulation can tell.
#[test]
fn upgrades_never_look_like_a_removal_to_kubelets_prober() {
    use flex_tests::prober::{Probe, Prober};
    require_root();
    let node = Node::new();
    let plugins = node.path("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let policy = node.path("policy/in.toml");
    std::fs::write(&policy, shipped_policy("tmpfs")).unwrap();
    let flex = flex_binary();
    let (tmpfs, hostile) = (guest("flex_tmpfs"), guest("flex_hostile"));
    let install = |name: &str, component: &std::path::Path| {
        let (plugins, policy) = (plugins.to_str().unwrap(), policy.to_str().unwrap());
        let component = component.to_str().unwrap();
        let args = [
            "install",
            "--plugin-dir",
            plugins,
            name,
            component,
            "--policy",
            policy,
        ];
        let out = node.run(&flex, &args);
        assert_eq!(out.code, 0, "{out:?}");
        out.stdout
    };
    // A driver installed by an earlier flex: the executable and the component as plain files.
    let old = plugins.join("acme~old");
    std::fs::create_dir(&old).unwrap();
    std::fs::copy(&flex, old.join("old")).unwrap();
    std::fs::copy(&tmpfs, old.join("old.wasm")).unwrap();

    let prober = Prober::watch(&plugins);
    install("acme~tmpfs", &tmpfs);
    for component in [&hostile, &tmpfs, &hostile, &tmpfs] {
        assert!(install("acme~tmpfs", component).starts_with("upgraded"));
        node.run(&plugins.join("acme~tmpfs/tmpfs"), &["init"])
            .success();
    }
    assert!(install("acme~tmpfs", &tmpfs).starts_with("unchanged"));
    install("acme~old", &hostile);
    let seen = prober.finish();
    let removals: Vec<_> = seen
        .iter()
        .filter(|s| matches!(s.probe, Probe::Remove(_)))
        .collect();
    assert!(
        removals.is_empty(),
        "kubelet would drop the driver: {removals:?}"
    );
    for name in ["acme~tmpfs", "acme~old"] {
        let updates = seen
            .iter()
            .filter(|s| s.probe == Probe::AddOrUpdate(name.into()))
            .count();
        assert!(updates >= 1, "{name} never re-probed: {seen:?}");
    }
    assert_eq!(visible(&old), ["old", "old.wasm"]);
    assert_eq!(
        std::fs::read(old.join("old.wasm")).unwrap(),
        std::fs::read(&hostile).unwrap()
    );
    node.run(&old.join("old"), &["init"]).success();

    let prober = Prober::watch(&plugins);
    uninstall(&node, &plugins, "acme~tmpfs");
    let seen = prober.finish();
    assert!(
        seen.iter()
            .any(|s| s.probe == Probe::Remove("acme~tmpfs".into())),
        "an uninstall is a removal: {seen:?}"
    );
}

/// `<dev>-<ino>` of a file, as an artifact's name starts.
fn inode(path: &std::path::Path) -> String {
    let meta = path.metadata().unwrap();
    format!("{:x}-{:x}", meta.dev(), meta.ino())
}

fn artifact_inode(artifact: &std::path::Path) -> String {
    let name = artifact.file_name().unwrap().to_string_lossy().into_owned();
    name.splitn(3, '-').take(2).collect::<Vec<_>>().join("-")
}

#[test]
fn bad_installs_leave_nothing_behind() {
    let node = Node::new();
    let plugins = node.path("plugins");
    let flex = flex_binary();
    let not_wasm = node.path("not.wasm");
    std::fs::write(&not_wasm, b"garbage").unwrap();
    let dir = plugins.to_str().unwrap();
    for (args, expected) in [
        (
            vec![
                "install",
                "--plugin-dir",
                dir,
                "acme~x",
                not_wasm.to_str().unwrap(),
            ],
            "not a valid component",
        ),
        (
            vec![
                "install",
                "--plugin-dir",
                dir,
                "a~b~c",
                not_wasm.to_str().unwrap(),
            ],
            "invalid driver name",
        ),
        (vec!["install", "acme~x"], "Usage: flex install"),
    ] {
        let out = node.run(&flex, &args);
        // A usage error exits 2, a refused install 1; both explain themselves on stderr.
        let code = if expected.starts_with("Usage") { 2 } else { 1 };
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(out.stderr.contains(expected), "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{args:?}");
        assert!(
            listing(&plugins).is_empty(),
            "{args:?} left {:?}",
            listing(&plugins)
        );
        assert!(node.artifacts().is_empty(), "{args:?}");
    }
}

/// What `flex install` writes has fixed modes, never its sources': a world-writable (or
/// setuid) component, executable or compiler given to it does not become a root-owned file
/// others can write, or run as root. And a compiler others could have written is never run.
#[test]
fn installed_files_have_fixed_modes_and_a_writable_compiler_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    require_root();
    let node = Node::new();
    let plugins = node.path("plugins");
    let policy = node.path("policy/in.toml");
    std::fs::write(&policy, shipped_policy("tmpfs")).unwrap();
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let mode = |path: &std::path::Path| path.metadata().unwrap().mode() & 0o7777;
    // Copied by `cp`, not by this process: a copy written here while another test thread
    // forks would fail exec with ETXTBSY (the child inherits the open file).
    let bin = node.path("bin");
    std::fs::create_dir(&bin).unwrap();
    chmod(&bin, 0o755);
    let (flex, compiler) = (bin.join("flex"), bin.join("flex-compile"));
    let source = flex_binary();
    for (from, to) in [
        (source.clone(), &flex),
        (source.with_file_name("flex-compile"), &compiler),
    ] {
        let cp = std::process::Command::new("cp").arg(from).arg(to).status();
        assert!(cp.unwrap().success());
        chmod(to, 0o6777);
    }
    let component = node.path("in.wasm");
    std::fs::copy(guest("flex_tmpfs"), &component).unwrap();
    chmod(&component, 0o666);
    let install = |compiler: Option<&std::path::Path>| {
        let mut command = node.command(
            &flex,
            &["install", "--plugin-dir", plugins.to_str().unwrap()],
        );
        command
            .args(["acme~tmpfs", component.to_str().unwrap()])
            .args(["--policy", policy.to_str().unwrap()])
            .env_remove("FLEX_COMPILER");
        if let Some(compiler) = compiler {
            command.env("FLEX_COMPILER", compiler);
        }
        Output::from(command.output().expect("exec flex"))
    };

    // The world-writable flex-compile beside this flex is not run.
    let out = install(None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("refused") && out.stderr.contains("writable by group or others"),
        "{out:?}"
    );
    assert!(listing(&plugins).is_empty(), "{:?}", listing(&plugins));

    // Named by FLEX_COMPILER, it is the caller's choice.
    let out = install(Some(&compiler));
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out:?}");
    let dir = plugins.join("acme~tmpfs");
    assert_eq!(mode(&dir.join("tmpfs.wasm")), 0o644, "the component");
    assert_eq!(mode(&dir.join("tmpfs")), 0o755, "the executable");
    assert_eq!(mode(&plugins.join(".flex-compile")), 0o755, "the compiler");
    node.run(&dir.join("tmpfs"), &["init"]).success();

    // The installed driver rebuilds a lost artifact with the plugin dir's compiler only while
    // nobody else could have written it.
    let artifacts = node.artifacts();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    std::fs::remove_file(&artifacts[0]).unwrap();
    chmod(&plugins.join(".flex-compile"), 0o777);
    let refused = node.run(&dir.join("tmpfs"), &["init"]).failure();
    assert!(refused.contains(".flex-compile refused"), "{refused}");
    assert!(node.artifacts().is_empty());
    chmod(&plugins.join(".flex-compile"), 0o755);
    node.run(&dir.join("tmpfs"), &["init"]).success();
    assert_eq!(node.artifacts().len(), 1);
    uninstall(&node, &plugins, "acme~tmpfs");
}

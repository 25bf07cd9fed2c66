//! `flex install` / `flex uninstall` lay a driver out as kubelet expects, atomically.

use flex_tests::*;

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
    let files = listing(&dir);
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(
        files[0].starts_with(".tmpfs.wasm.") && files[0].ends_with(".cwasm"),
        "precompiled: {files:?}"
    );
    assert_eq!(&files[1..], ["tmpfs", "tmpfs.wasm"]);
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
    std::fs::remove_file(dir.join(&files[0])).unwrap();
    node.run(&dir.join("tmpfs"), &["init"]).success();
    assert!(node.log().contains("compiled"), "{}", node.log());
    assert!(
        dir.join(&files[0]).is_file(),
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
    assert_eq!(
        listing(&dir)
            .iter()
            .filter(|n| n.ends_with(".cwasm"))
            .count(),
        1,
        "no stale artifact"
    );
    assert_eq!(listing(&plugins), [".flex-compile", "acme~tmpfs"]);

    let out = node.run(
        &flex,
        &[
            "uninstall",
            "--plugin-dir",
            plugins.to_str().unwrap(),
            "acme~tmpfs",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        listing(&plugins).is_empty(),
        "the last driver takes the compiler with it"
    );
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
        (vec!["install", "acme~x"], "usage"),
    ] {
        let out = node.run(&flex, &args);
        assert_eq!(out.code, 1, "{args:?}");
        assert!(out.stdout.contains(expected), "{args:?}: {}", out.stdout);
        assert!(
            listing(&plugins).is_empty(),
            "{args:?} left {:?}",
            listing(&plugins)
        );
    }
}

//! Image files and their loop devices; dry runs.

use super::*;

#[test]
fn image_names_cannot_leave_the_image_dir() {
    let s = Scratch::new();
    let mut block = s.block();
    let long = "a".repeat(super::super::images::MAX_NAME + 1);
    for name in ["../x", "a/b", ".hidden", "", "..", "sp ace", "nul\0", &long] {
        let err = Host::create_image(&mut block, name.into(), MIB).unwrap_err();
        assert!(
            err.starts_with("denied: invalid image name"),
            "{name}: {err}"
        );
        assert!(Host::image_size(&mut block, name.into()).is_err());
        assert!(Host::attach_image(&mut block, name.into()).is_err());
        assert!(Host::delete_image(&mut block, name.into()).is_err());
    }
    assert!(!s.dir.path().join("x").exists());
    assert!(
        !s.images().exists(),
        "nothing may be created for a denied name"
    );
    let ok = "a".repeat(super::super::images::MAX_NAME);
    assert_eq!(Host::create_image(&mut block, ok.clone(), MIB), Ok(MIB));
    let meta = std::fs::metadata(s.images()).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    let image = std::fs::metadata(s.images().join(&ok)).unwrap();
    assert_eq!(image.mode() & 0o777, 0o600);
}

#[test]
fn symlinked_or_foreign_images_are_refused() {
    let s = Scratch::new();
    let mut block = s.block();
    Host::create_image(&mut block, "real".into(), MIB).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", s.images().join("link")).unwrap();
    for call in [
        Host::attach_image(&mut block, "link".into()).map(drop),
        Host::grow_image(&mut block, "link".into(), 2 * MIB),
        Host::create_image(&mut block, "link".into(), MIB).map(drop),
    ] {
        assert!(call.unwrap_err().contains("symlink"));
    }
    assert!(Host::image_size(&mut block, "link".into()).is_err());
    std::fs::hard_link(s.images().join("real"), s.images().join("hard")).unwrap();
    let err = Host::attach_image(&mut block, "hard".into()).unwrap_err();
    assert!(err.contains("other links"), "{err}");
    assert!(loop_devices_under(s.dir.path()).is_empty());
}

#[test]
fn an_image_dir_others_can_write_is_refused() {
    let s = Scratch::new();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(s.images())
        .unwrap();
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &s.images(),
        nix::sys::stat::Mode::from_bits_truncate(0o777),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .unwrap();
    let mut block = s.block();
    let err = Host::create_image(&mut block, "v".into(), MIB).unwrap_err();
    assert!(err.contains("writable by users other than root"), "{err}");
    assert!(
        Host::image_size(&mut block, "v".into())
            .unwrap_err()
            .contains("writable")
    );
    assert!(std::fs::read_dir(s.images()).unwrap().next().is_none());
}

#[test]
fn image_size_limits() {
    let s = Scratch::new();
    let mut block = s.block();
    let err = Host::create_image(&mut block, "big".into(), 64 * MIB + 1).unwrap_err();
    assert!(err.contains("max_image_bytes"), "{err}");
    assert!(Host::create_image(&mut block, "zero".into(), 0).is_err());
    assert_eq!(Host::image_size(&mut block, "big".into()), Ok(None));
    assert_eq!(
        Host::create_image(&mut block, "v".into(), 8 * MIB),
        Ok(8 * MIB)
    );
    // An existing image is kept as it is.
    assert_eq!(
        Host::create_image(&mut block, "v".into(), 16 * MIB),
        Ok(8 * MIB)
    );
    let err = Host::grow_image(&mut block, "v".into(), 65 * MIB).unwrap_err();
    assert!(err.contains("max_image_bytes"), "{err}");
    assert_eq!(Host::image_size(&mut block, "v".into()), Ok(Some(8 * MIB)));

    let no_dir = BlockGrant {
        image_dir: None,
        ..grant(&s.images())
    };
    let mut block = s.block_with(&no_dir, "acme~a", Audit::to(None, "t", "t", false));
    let err = Host::create_image(&mut block, "v".into(), MIB).unwrap_err();
    assert!(err.contains("no block.image_dir"), "{err}");
}

#[test]
fn loop_image_lifecycle() {
    let s = Scratch::new();
    let mut block = s.block();
    assert_eq!(Host::image_device(&mut block, "vol".into()), Ok(None));
    assert!(Host::attach_image(&mut block, "vol".into()).is_err());
    Host::create_image(&mut block, "vol".into(), 16 * MIB).unwrap();
    let device = Host::attach_image(&mut block, "vol".into()).unwrap();
    assert!(device.starts_with("/dev/loop"), "{device}");
    let autoclear = std::fs::read_to_string(format!(
        "/sys/block/{}/loop/autoclear",
        device.trim_start_matches("/dev/")
    ))
    .unwrap();
    assert_eq!(autoclear.trim(), "0");
    assert_eq!(
        Host::attach_image(&mut block, "vol".into()),
        Ok(device.clone())
    );
    assert_eq!(
        Host::image_device(&mut block, "vol".into()),
        Ok(Some(device.clone()))
    );
    assert_eq!(Host::device_size(&mut block, device.clone()), Ok(16 * MIB));
    Host::grow_image(&mut block, "vol".into(), 24 * MIB).unwrap();
    assert_eq!(Host::device_size(&mut block, device.clone()), Ok(24 * MIB));
    // Never shrinks.
    Host::grow_image(&mut block, "vol".into(), 8 * MIB).unwrap();
    assert_eq!(
        Host::image_size(&mut block, "vol".into()),
        Ok(Some(24 * MIB))
    );

    let err = Host::delete_image(&mut block, "vol".into()).unwrap_err();
    assert!(err.contains("attached"), "{err}");
    Host::detach_image(&mut block, "vol".into()).unwrap();
    Host::detach_image(&mut block, "vol".into()).unwrap();
    assert_eq!(Host::image_device(&mut block, "vol".into()), Ok(None));
    Host::delete_image(&mut block, "vol".into()).unwrap();
    Host::delete_image(&mut block, "vol".into()).unwrap();
    assert_eq!(Host::image_size(&mut block, "vol".into()), Ok(None));
    assert!(loop_devices_under(s.dir.path()).is_empty());
}

#[test]
fn concurrent_attaches_share_one_loop_device() {
    let s = Scratch::new();
    Host::create_image(&mut s.block(), "shared".into(), 8 * MIB).unwrap();
    let devices: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| Host::attach_image(&mut s.block(), "shared".into())))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    assert!(devices.iter().all(|d| d == &devices[0]), "{devices:?}");
    assert_eq!(loop_devices_under(s.dir.path()).len(), 1);
}

#[test]
fn dry_run_performs_nothing_and_answers_plausibly() {
    let s = Scratch::new();
    let device = ForeignLoop::new(32 * MIB);
    let log = s.dir.path().join("audit.jsonl");
    let audit = Audit::to(Some(log.clone()), "acme~loop", "mountdevice", true);
    let mut block = s.block_with(&grant(&s.images()), "acme~loop", audit);
    assert_eq!(
        Host::mkfs(&mut block, device.path.clone(), "ext4".into()),
        Ok(())
    );
    assert_eq!(Host::create_image(&mut block, "v".into(), MIB), Ok(MIB));
    assert_eq!(Host::image_size(&mut block, "v".into()), Ok(Some(MIB)));
    assert_eq!(Host::image_device(&mut block, "v".into()), Ok(None));
    let attached = Host::attach_image(&mut block, "v".into()).unwrap();
    assert!(attached.starts_with("/dev/loop"), "{attached}");
    assert_eq!(
        Host::image_device(&mut block, "v".into()),
        Ok(Some(attached))
    );
    assert!(Host::attach_image(&mut block, "missing".into()).is_err());
    assert!(Host::mkfs(&mut block, "/dev/null".into(), "ext4".into()).is_err());
    assert_eq!(Host::probe_fs(&mut block, device.path.clone()), Ok(None));
    assert!(
        !s.images().exists(),
        "dry run must not create the image dir"
    );
    assert!(
        !s.dir.path().join("run").exists(),
        "dry run must claim nothing"
    );
    assert!(loop_devices_under(s.dir.path()).is_empty());

    let text = std::fs::read_to_string(&log).unwrap();
    let decisions: Vec<(String, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|l| {
            (
                l["operation"].as_str().unwrap().into(),
                l["decision"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("mkfs", "would-do"),
        ("create-image", "would-do"),
        ("attach-image", "would-do"),
        ("attach-image", "would-do"),
        ("mkfs", "deny"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(decisions, expected);
}

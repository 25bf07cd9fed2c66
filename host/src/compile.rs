//! `flex-compile --cache-fd N`: compiles the driver component open as its stdin into the
//! artifact cache directory open as descriptor N (see `artifact.rs`); `--out-fd N` writes the
//! artifact into the file open as N instead (an in-memory file, when the cache cannot be
//! written: `artifact/memory.rs`). A separate executable so
//! that `flex` itself carries no compiler; built from this crate with the `compiler` feature,
//! so both agree on the wasmtime build and the engine `Config`. `flex install` and the first
//! call of a component without an artifact run it, with descriptors they opened and checked;
//! errors go to stderr, for `flex` to relay.

#[allow(dead_code, unused_imports)] // the runtime half of the module is not used here
mod artifact;

use std::os::fd::BorrowedFd;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = match args.as_slice() {
        [flag, fd] if flag == "--cache-fd" || flag == "--out-fd" => fd
            .parse::<i32>()
            .ok()
            .filter(|fd| *fd > 2)
            .map(|fd| (flag == "--cache-fd", fd)),
        _ => None,
    };
    let Some((into_cache, fd)) = target else {
        eprintln!(
            "usage: {} --cache-fd N | --out-fd N < COMPONENT (run by flex, with the cache \
             directory, or the file to write, open as N)",
            artifact::COMPILER
        );
        std::process::exit(2);
    };
    let result = inherited(fd, into_cache).and_then(|fd| {
        let stdin = std::io::stdin();
        // The component exactly as the caller opened it: stdin is that descriptor.
        let component = std::fs::File::from(
            std::os::fd::AsFd::as_fd(&stdin)
                .try_clone_to_owned()
                .map_err(|e| format!("stdin: {e}"))?,
        );
        let engine = wasmtime::Engine::new(&artifact::config())
            .map_err(|e| format!("cannot start the WebAssembly engine: {e:#}"))?;
        match into_cache {
            true => artifact::compile_into(&engine, &component, fd).map(|_| ()),
            false => artifact::compile_to(&engine, &component, fd),
        }
    });
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

/// The inherited cache directory (or output file), checked to be an open directory (a regular
/// file) before it is written to.
fn inherited(fd: i32, directory: bool) -> Result<BorrowedFd<'static>, String> {
    let flags = nix::fcntl::fcntl(
        // SAFETY: only probes whether `fd` is open (F_GETFD); nothing is done through it yet.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    );
    if flags.is_err() {
        return Err(format!("--cache-fd {fd}: not an open descriptor"));
    }
    // SAFETY: `fd` is open (checked above), inherited from flex for this purpose, never
    // closed by this process, which exits after using it.
    let dir = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = nix::sys::stat::fstat(dir).map_err(|e| format!("descriptor {fd}: {e}"))?;
    let (kind, what) = match directory {
        true => (nix::libc::S_IFDIR, "--cache-fd {fd}: not a directory"),
        false => (nix::libc::S_IFREG, "--out-fd {fd}: not a regular file"),
    };
    if stat.st_mode & nix::libc::S_IFMT != kind {
        return Err(what.replace("{fd}", &fd.to_string()));
    }
    Ok(dir)
}

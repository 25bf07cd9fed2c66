//! `flex-compile --cache-fd N`: compiles the driver component open as its stdin into the
//! artifact cache directory open as descriptor N (see `artifact.rs`). A separate executable so
//! that `flex` itself carries no compiler; built from this crate with the `compiler` feature,
//! so both agree on the wasmtime build and the engine `Config`. `flex install` and the first
//! call of a component without an artifact run it, with descriptors they opened and checked;
//! errors go to stderr, for `flex` to relay.

#[allow(dead_code)] // the runtime half of the module is not used here
mod artifact;

use std::os::fd::BorrowedFd;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [flag, fd] if flag == "--cache-fd" => fd.parse::<i32>().ok().filter(|fd| *fd > 2),
        _ => None,
    };
    let Some(dir) = dir else {
        eprintln!(
            "usage: {} --cache-fd N < COMPONENT (run by flex, with the cache directory open as N)",
            artifact::COMPILER
        );
        std::process::exit(2);
    };
    let result = cache_dir(dir).and_then(|dir| {
        let stdin = std::io::stdin();
        // The component exactly as the caller opened it: stdin is that descriptor.
        let component = std::fs::File::from(
            std::os::fd::AsFd::as_fd(&stdin)
                .try_clone_to_owned()
                .map_err(|e| format!("stdin: {e}"))?,
        );
        let engine = wasmtime::Engine::new(&artifact::config())
            .map_err(|e| format!("cannot start the WebAssembly engine: {e:#}"))?;
        artifact::compile_into(&engine, &component, dir)
    });
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

/// The inherited cache directory, checked to be an open directory before it is written to.
fn cache_dir(fd: i32) -> Result<BorrowedFd<'static>, String> {
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
    let stat = nix::sys::stat::fstat(dir).map_err(|e| format!("--cache-fd {fd}: {e}"))?;
    if stat.st_mode & nix::libc::S_IFMT != nix::libc::S_IFDIR {
        return Err(format!("--cache-fd {fd}: not a directory"));
    }
    Ok(dir)
}

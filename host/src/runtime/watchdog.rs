//! Stops a call at its deadline: the epoch interrupts WebAssembly code; a host call still
//! blocked on the outside world a grace period later is answered for (per-call `flex`) or
//! logged (a long-running caller).

use crate::logfile::Logger;
use crate::protocol::Reply;
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::Engine;

/// How long a host call may keep running past the verb's deadline before `flex` replies
/// without it (the epoch interrupts only WebAssembly code).
const HOST_CALL_GRACE: Duration = Duration::from_secs(3);

/// What the watchdog does about a host call still running a grace period past the deadline.
#[derive(Clone, Copy)]
pub enum WhenStuck {
    /// Logs it: a long-running caller times the call out itself.
    Log,
    /// Replies with a Failure and exits: a per-call `flex`, or a warm child serving a call.
    Reply,
    /// Exits with this status: a warm child still starting.
    Exit(i32),
}

/// Dropped with the call: the channel closes and the thread ends at once.
pub struct Watchdog {
    call: Sender<()>,
    thread: JoinHandle<()>,
}

impl Watchdog {
    pub fn start(
        engine: Engine,
        driver: &str,
        verb: &str,
        deadline: Duration,
        when_stuck: WhenStuck,
    ) -> Watchdog {
        let (call, finished) = channel::<()>();
        let (driver, verb) = (driver.to_string(), verb.to_string());
        let thread = std::thread::spawn(move || {
            if finished.recv_timeout(deadline) != Err(RecvTimeoutError::Timeout) {
                return;
            }
            engine.increment_epoch();
            if finished.recv_timeout(HOST_CALL_GRACE) != Err(RecvTimeoutError::Timeout) {
                return;
            }
            let message = format!(
                "driver {driver} did not finish within {}s during {verb} (blocked in a host call)",
                deadline.as_secs()
            );
            Logger::open(&driver, &verb).error(&message);
            match when_stuck {
                WhenStuck::Log => {}
                WhenStuck::Reply => crate::reply_and_exit(&Reply::failure(message)),
                WhenStuck::Exit(code) => std::process::exit(code),
            }
        });
        Watchdog { call, thread }
    }

    /// Ends the watch and waits for its thread to be gone: a warm child must be single-threaded
    /// to enter its caller's mount namespace.
    pub fn stop(self) {
        drop(self.call);
        let _ = self.thread.join();
    }
}

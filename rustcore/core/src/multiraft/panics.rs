//! raft-rs panics on broken invariants (its `fatal!`). The driver catches them ([`catch`]) and
//! reports each as `Error::Fatal`, naming the group, the panic's message and where it happened.
//! The process's panic hook would print them as well (a backtrace on stderr, before the caller's
//! one clear line), so the driver installs a hook that stays silent for panics it catches and
//! passes every other panic on to the hook that was there before.

use std::cell::{Cell, RefCell};
use std::panic::{self, catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside `catch`.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// Where the panic being caught happened, as the hook saw it.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Install the hook, once per process.
pub fn silence_caught_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) {
                let location = info
                    .location()
                    .map(|at| format!("{}:{}", short_path(at.file()), at.line()));
                LOCATION.with(|cell| *cell.borrow_mut() = location);
            } else {
                previous(info);
            }
        }));
    });
}

/// The crate, directory and file of a source path: `raft-0.7.0/src/raft_log.rs`.
fn short_path(path: &str) -> &str {
    let start = path.rmatch_indices('/').nth(2).map_or(0, |(at, _)| at + 1);
    &path[start..]
}

/// Run `f`; a panic inside becomes `Err("<message> (at <file>:<line>)")`.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let outer = CATCHING.with(|catching| catching.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|catching| catching.set(outer));
    result.map_err(|payload| {
        let message = if let Some(text) = payload.downcast_ref::<&str>() {
            (*text).to_owned()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "raft-rs panicked".to_owned()
        };
        match LOCATION.with(|cell| cell.borrow_mut().take()) {
            Some(location) => format!("{message} (at {location})"),
            None => message,
        }
    })
}

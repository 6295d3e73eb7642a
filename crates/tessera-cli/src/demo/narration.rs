//! How `tessera demo` speaks: numbered steps, checks and details on stdout,
//! flushed line by line so a pipe shows the story as it happens. Shared by the
//! Rust story (`story`) and the Python and Node runtimes' part (`clients`).

use std::io::Write;

/// One line of the story.
pub(crate) fn say(s: &str) {
    println!("{s}");
    let _ = std::io::stdout().flush();
}

/// A numbered step's heading.
pub(crate) fn step(n: u32, title: &str) {
    say(&format!("\n── {n}. {title}"));
}

/// A check that held.
pub(crate) fn ok(s: &str) {
    say(&format!("   ✔ {s}"));
}

/// A detail under a step or check.
pub(crate) fn detail(s: &str) {
    say(&format!("     {s}"));
}

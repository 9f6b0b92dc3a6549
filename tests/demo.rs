//! `sandboxd demo` runs the whole scripted lifecycle and exits 0.

use std::process::Command;

#[test]
fn demo_walks_through_the_lifecycle() {
    let output = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .arg("demo")
        .output()
        .expect("the sandboxd binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    for event in [
        "LeaseApproved",
        "LeaseFrozen",
        "LeaseUnfrozen",
        "LeaseTerminated",
        "AccountCleanupSucceeded",
        "LeaseExpired",
    ] {
        assert!(
            stdout.contains(event),
            "no {event} in the demo output:\n{stdout}"
        );
    }
}

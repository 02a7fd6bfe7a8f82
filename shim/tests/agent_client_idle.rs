//! An idle connection to a guest agent costs the shim no wake-ups. Alone in
//! its binary: it counts the context switches of every thread of the
//! process, which other tests running beside it would add to.

use std::{fs, os::unix::net::UnixStream, thread, time::Duration};

use firedoor_shim::sandbox::GuestAgent;

/// Voluntary + involuntary context switches of every thread of this process
/// except the calling one (the test thread, which sleeps through the window).
fn other_threads_switches() -> u64 {
    let me = nix::unistd::gettid().as_raw().to_string();
    let mut total = 0;
    for task in fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap();
        if task.file_name().to_str() == Some(me.as_str()) {
            continue;
        }
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        total += status
            .lines()
            .filter(|line| line.contains("ctxt_switches:"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

#[test]
fn an_idle_agent_connection_wakes_no_thread() {
    // The guest's end stays open and silent, as an idle agent's does.
    let (host, _guest) = UnixStream::pair().unwrap();
    let agent = GuestAgent::connect(host).unwrap();
    thread::sleep(Duration::from_millis(200));

    let before = other_threads_switches();
    thread::sleep(Duration::from_secs(1));
    let woken = other_threads_switches() - before;

    // ttrpc's sync client polled every 10 ms: ~100 a second.
    assert!(
        woken < 10,
        "{woken} context switches in 1 s of an idle connection"
    );
    drop(agent);
}

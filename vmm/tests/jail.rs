//! The jail on its own, in a forked child of the test: what the jailed
//! process can still reach by path (sockets in the exposed directory, for
//! guest-initiated vsock connections) and what it cannot.

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use firedoor_vmm::jail::{self, JailConfig};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

fn jail_possible() -> bool {
    if jail::check_privileges().is_ok() {
        return true;
    }
    eprintln!("SKIPPED: the jail needs CAP_SYS_ADMIN and CAP_SETPCAP (run the tests as root)");
    false
}

/// What the jailed child checks; an error names the first thing that failed.
fn in_jail(exposed: &Path, hidden: &Path) -> Result<(), String> {
    jail::enter(&JailConfig {
        exposed_dirs: vec![exposed.to_owned()],
    })
    .map_err(|e| format!("enter: {e}"))?;
    for path in [hidden, Path::new("/proc/self"), Path::new("/dev/kvm")] {
        if path.exists() {
            return Err(format!("{} is visible in the jail", path.display()));
        }
    }
    if std::fs::write(Path::new("/new-file"), "x").is_ok() {
        return Err("the jail's root is writable".into());
    }
    // A guest-initiated vsock connection to host port 1024.
    let mut stream =
        UnixStream::connect(exposed.join("v.sock_1024")).map_err(|e| format!("connect: {e}"))?;
    std::io::Write::write_all(&mut stream, b"from the jail").map_err(|e| e.to_string())?;
    // The VMM removes its own listener at exit.
    std::fs::write(exposed.join("scratch"), "").map_err(|e| format!("create: {e}"))?;
    std::fs::remove_file(exposed.join("scratch")).map_err(|e| format!("unlink: {e}"))?;
    Ok(())
}

#[test]
fn jailed_process_reaches_only_the_exposed_directory() {
    if !jail_possible() {
        return;
    }
    // Under /tmp, where the jail builds its root: the exposed directory
    // must still be found once the staging tmpfs hides /tmp.
    let dir = tempfile::TempDir::new_in("/tmp").unwrap();
    let exposed = dir.path().join("run");
    std::fs::create_dir(&exposed).unwrap();
    let hidden = dir.path().join("secret");
    std::fs::write(&hidden, "host only").unwrap();
    let listener = UnixListener::bind(exposed.join("v.sock_1024")).unwrap();

    // SAFETY: the child only enters the jail, makes a few system calls and
    // leaves with _exit; glibc keeps malloc usable after fork.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let code = match in_jail(&exposed, &hidden) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("jailed child: {e}");
                    1
                }
            };
            // SAFETY: ends the forked child without running the parent's
            // destructors or test harness.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            listener.set_nonblocking(false).unwrap();
            let status = waitpid(child, None).unwrap();
            assert_eq!(status, WaitStatus::Exited(child, 0));
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut got = String::new();
            stream.read_to_string(&mut got).unwrap();
            assert_eq!(got, "from the jail");
        }
    }
    assert!(!exposed.join("scratch").exists());
    // The jail's mounts stayed in the child's namespace.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.path().to_string_lossy().into_owned();
    assert!(
        !mounts.contains(&dir) && !mounts.contains("firedoor-vmm-jail"),
        "{mounts}"
    );
}

#[test]
fn entering_with_threads_running_is_refused() {
    if !jail_possible() {
        return;
    }
    // The test harness runs this test on its own thread: two threads.
    let err = jail::enter(&JailConfig::default()).unwrap_err();
    assert!(
        err.to_string().contains("before any thread starts"),
        "{err}"
    );
}

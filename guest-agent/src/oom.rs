//! OOM kills: each container's `memory.events` is watched with inotify (the
//! kernel reports changes of cgroup event files that way) and every new
//! `oom_kill` is queued for GetOOMEvent. The init's exit path checks the
//! counter too, so its OOM event is queued before its exit is published.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Condvar, Mutex},
    thread,
};

use log::{debug, info, warn};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::cgroup::Cgroup;

/// OOM kills of one container that have been queued.
#[derive(Debug)]
pub struct OomCounter {
    id: String,
    cgroup: Cgroup,
    seen: Mutex<u64>,
}

impl OomCounter {
    pub fn new(id: &str, cgroup: Cgroup) -> Arc<OomCounter> {
        let seen = cgroup.oom_kills();
        Arc::new(OomCounter {
            id: id.into(),
            cgroup,
            seen: Mutex::new(seen),
        })
    }
}

#[derive(Debug)]
pub struct OomEvents {
    queue: Mutex<Queue>,
    ready: Condvar,
    inotify: Option<Inotify>,
    watches: Mutex<HashMap<WatchDescriptor, Arc<OomCounter>>>,
}

/// Queued container ids; `closed` once the agent shuts down.
#[derive(Debug, Default)]
struct Queue {
    ids: VecDeque<String>,
    closed: bool,
}

impl OomEvents {
    /// Starts the watcher thread.
    pub fn start() -> Arc<OomEvents> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC)
            .map_err(|e| warn!("inotify: {e}; OOM kills are only seen at exit"))
            .ok();
        let events = Arc::new(OomEvents {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            inotify,
            watches: Mutex::new(HashMap::new()),
        });
        if events.inotify.is_some() {
            let watcher = events.clone();
            let spawned = thread::Builder::new()
                .name("oom".into())
                .spawn(move || watcher.run());
            if let Err(e) = spawned {
                warn!("starting the OOM watcher: {e}");
            }
        }
        events
    }

    fn run(&self) {
        let Some(inotify) = &self.inotify else { return };
        loop {
            let events = match inotify.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!("reading inotify events: {e}");
                    return;
                }
            };
            for event in events {
                let counter = self.watches.lock().unwrap().get(&event.wd).cloned();
                if let Some(counter) = counter {
                    self.check(&counter);
                }
            }
        }
    }

    pub fn watch(&self, counter: &Arc<OomCounter>) {
        let Some(inotify) = &self.inotify else { return };
        let file = counter.cgroup.file("memory.events");
        match inotify.add_watch(&file, AddWatchFlags::IN_MODIFY) {
            Ok(wd) => {
                self.watches.lock().unwrap().insert(wd, counter.clone());
            }
            Err(e) => debug!("not watching {file:?} for OOM kills: {e}"),
        }
    }

    pub fn unwatch(&self, counter: &Arc<OomCounter>) {
        let mut watches = self.watches.lock().unwrap();
        let wds: Vec<_> = watches
            .iter()
            .filter(|(_, c)| Arc::ptr_eq(c, counter))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in wds {
            watches.remove(&wd);
            if let Some(inotify) = &self.inotify {
                // Fails harmlessly when the cgroup is already gone.
                let _ = inotify.rm_watch(wd);
            }
        }
    }

    /// Queues one event if the container had an OOM kill since the last check.
    pub fn check(&self, counter: &OomCounter) {
        let now = counter.cgroup.oom_kills();
        let mut seen = counter.seen.lock().unwrap();
        if now > *seen {
            *seen = now;
            info!("OOM kill in container {}", counter.id);
            self.queue.lock().unwrap().ids.push_back(counter.id.clone());
            self.ready.notify_all();
        }
    }

    /// Waits for the next event; `None` once [`OomEvents::close`] was
    /// called and every queued event has been taken.
    pub fn next(&self) -> Option<String> {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut queue = self
            .ready
            .wait_while(queue, |q| q.ids.is_empty() && !q.closed)
            .unwrap_or_else(|e| e.into_inner());
        queue.ids.pop_front()
    }

    /// Ends every wait in [`OomEvents::next`], now and later. The host's
    /// GetOOMEvent is a long poll that never ends by itself, and the ttrpc
    /// server's shutdown waits for every request in progress.
    pub fn close(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn close_ends_a_waiting_next_and_every_later_one() {
        let events = OomEvents::start();
        let waiter = events.clone();
        let waiting = thread::spawn(move || waiter.next());
        thread::sleep(Duration::from_millis(50));
        events.close();
        assert_eq!(waiting.join().unwrap(), None);
        assert_eq!(events.next(), None);
    }

    #[test]
    fn events_queued_before_close_are_still_delivered() {
        let events = OomEvents::start();
        events.queue.lock().unwrap().ids.push_back("c1".into());
        events.close();
        assert_eq!(events.next().as_deref(), Some("c1"));
        assert_eq!(events.next(), None);
    }
}

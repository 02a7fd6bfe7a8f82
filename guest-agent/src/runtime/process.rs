//! One process of a container (its init or an exec) and its exit.

use std::{
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use super::lock;
use crate::{signals::Exit, streams::Streams};

#[derive(Debug)]
pub struct Process {
    pub(super) pid: i32,
    pub(super) exit: Mutex<Option<Exit>>,
    exited: Condvar,
    pub(super) streams: Streams,
}

impl Process {
    pub(super) fn new(pid: i32, streams: Streams) -> Arc<Process> {
        Arc::new(Process {
            pid,
            exit: Mutex::new(None),
            exited: Condvar::new(),
            streams,
        })
    }

    pub(super) fn set_exit(&self, exit: Exit) {
        *lock(&self.exit) = Some(exit);
        self.exited.notify_all();
        self.streams.release();
    }

    pub(super) fn exit(&self) -> Option<Exit> {
        *lock(&self.exit)
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> Exit {
        let exit = lock(&self.exit);
        let exit = self
            .exited
            .wait_while(exit, |e| e.is_none())
            .unwrap_or_else(|e| e.into_inner());
        exit.expect("waited for the exit")
    }

    pub(super) fn wait_timeout(&self, timeout: Duration) -> Option<Exit> {
        let exit = lock(&self.exit);
        let (exit, _) = self
            .exited
            .wait_timeout_while(exit, timeout, |e| e.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *exit
    }
}

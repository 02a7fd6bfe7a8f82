//! Events to containerd, in the order containerd expects per task: create,
//! start, (exec-added, exec-started), (oom), exit, delete.

use containerd_shim::{
    event::Event,
    protos::events::task::{
        TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM,
        TaskPaused, TaskResumed, TaskStart,
    },
    publisher::RemotePublisher,
};
use log::{debug, warn};

use super::process::ExitInfo;

/// Where events go: containerd's event service, or a recorder in tests.
pub trait EventSink: Send + Sync {
    fn publish(&self, event: Box<dyn Event>);
}

/// containerd's event service, through the address it gave the shim.
struct Containerd {
    publisher: RemotePublisher,
    namespace: String,
}

impl EventSink for Containerd {
    fn publish(&self, event: Box<dyn Event>) {
        let topic = event.topic();
        debug!("publishing {topic}");
        if let Err(e) = self.publisher.publish(
            ttrpc::context::Context::default(),
            &topic,
            &self.namespace,
            event,
        ) {
            warn!("publishing {topic}: {e}");
        }
    }
}

pub struct Events {
    sink: Box<dyn EventSink>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: String) -> Self {
        Self::to_sink(Box::new(Containerd {
            publisher,
            namespace,
        }))
    }

    pub fn to_sink(sink: Box<dyn EventSink>) -> Self {
        Events { sink }
    }

    fn publish(&self, event: Box<dyn Event>) {
        self.sink.publish(event);
    }

    pub fn create(&self, id: &str, bundle: &str, terminal: bool, stdio: [&str; 3], pid: u32) {
        self.publish(Box::new(TaskCreate {
            container_id: id.into(),
            bundle: bundle.into(),
            io: Some(TaskIO {
                stdin: stdio[0].into(),
                stdout: stdio[1].into(),
                stderr: stdio[2].into(),
                terminal,
                ..Default::default()
            })
            .into(),
            pid,
            ..Default::default()
        }));
    }

    pub fn start(&self, id: &str, pid: u32) {
        self.publish(Box::new(TaskStart {
            container_id: id.into(),
            pid,
            ..Default::default()
        }));
    }

    pub fn exec_added(&self, id: &str, exec_id: &str) {
        self.publish(Box::new(TaskExecAdded {
            container_id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        }));
    }

    pub fn exec_started(&self, id: &str, exec_id: &str, pid: u32) {
        self.publish(Box::new(TaskExecStarted {
            container_id: id.into(),
            exec_id: exec_id.into(),
            pid,
            ..Default::default()
        }));
    }

    pub fn oom(&self, id: &str) {
        self.publish(Box::new(TaskOOM {
            container_id: id.into(),
            ..Default::default()
        }));
    }

    /// `exec_id` empty for the init process (containerd then uses the
    /// container id as the process id).
    pub fn exit(&self, id: &str, exec_id: &str, pid: u32, exit: &ExitInfo) {
        self.publish(Box::new(TaskExit {
            container_id: id.into(),
            id: if exec_id.is_empty() { id } else { exec_id }.into(),
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        }));
    }

    pub fn delete(&self, id: &str, pid: u32, exit: &ExitInfo) {
        self.publish(Box::new(TaskDelete {
            container_id: id.into(),
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        }));
    }

    pub fn paused(&self, id: &str) {
        self.publish(Box::new(TaskPaused {
            container_id: id.into(),
            ..Default::default()
        }));
    }

    pub fn resumed(&self, id: &str) {
        self.publish(Box::new(TaskResumed {
            container_id: id.into(),
            ..Default::default()
        }));
    }
}

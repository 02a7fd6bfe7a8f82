//! Events to containerd, in the order containerd expects per task: create,
//! start, (exec-added, exec-started), (oom), exit, delete.

use containerd_shim::{
    event::Event,
    protos::events::task::{
        TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM,
        TaskPaused, TaskResumed, TaskStart,
    },
    protos::protobuf::MessageDyn,
    publisher::RemotePublisher,
};
use log::{debug, info, warn};
use std::{
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use super::process::ExitInfo;

/// Where events go: containerd's event service, or a recorder in tests.
pub trait EventSink: Send + Sync {
    fn publish(&self, event: Box<dyn Event>);
}

/// containerd's event socket, as it tells every shim.
const TTRPC_ADDRESS_ENV: &str = "TTRPC_ADDRESS";
/// How long one event is retried while containerd is away (a restart):
/// its connection is re-dialled with a growing pause.
const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(30);
const RECONNECT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// containerd's event service, through the address it gave the shim.
///
/// Each event gets a connection of its own, closed once containerd has
/// taken the event: ttrpc's synchronous client polls its socket every 10 ms
/// for as long as it is connected (about 100 wake-ups a second, half of an
/// idle shim's), and a shim publishes only a few events per container.
struct Containerd {
    /// The connection the shim was started with, until the first event;
    /// then `None` between events. Events go out one at a time under this
    /// lock, so they stay in order.
    publisher: Mutex<Option<RemotePublisher>>,
    /// Where to re-dial when containerd restarted under us.
    address: Option<String>,
    namespace: String,
}

impl Containerd {
    fn redial(&self) -> Option<RemotePublisher> {
        let address = self.address.as_deref()?;
        RemotePublisher::new(address)
            .map_err(|e| debug!("dialling {address}: {e}"))
            .ok()
    }
}

impl EventSink for Containerd {
    /// A connection broken by a containerd restart is re-dialled and the
    /// event sent again, for up to [`PUBLISH_RETRY_FOR`]: an exit event
    /// must not be lost because containerd was away for a moment.
    fn publish(&self, event: Box<dyn Event>) {
        let topic = event.topic();
        debug!("publishing {topic}");
        // Each attempt consumes a message: keep the bytes to make another.
        let encoded: &dyn MessageDyn = &*event;
        let descriptor = encoded.descriptor_dyn();
        let mut bytes = Vec::new();
        if let Err(e) = encoded.write_to_vec_dyn(&mut bytes) {
            return warn!("encoding {topic}: {e}");
        }
        let message = || -> Box<dyn MessageDyn> {
            let mut message = descriptor.new_instance();
            // Our own encoding of the same type: it decodes.
            let _ = message.merge_from_bytes_dyn(&bytes);
            message
        };
        let mut publisher = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = Instant::now() + PUBLISH_RETRY_FOR;
        let mut pause = Duration::from_millis(50);
        let mut failures = 0;
        loop {
            if publisher.is_none() {
                *publisher = self.redial();
            }
            let result = match publisher.as_ref() {
                Some(client) => client
                    .publish(
                        ttrpc::context::Context::default(),
                        &topic,
                        &self.namespace,
                        message(),
                    )
                    .map_err(|e| e.to_string()),
                None => Err("containerd's event socket is not accepting connections".into()),
            };
            match result {
                Ok(()) => {
                    if failures > 0 {
                        info!("published {topic} after reconnecting to containerd");
                    }
                    // Without an address to re-dial, the one connection stays.
                    if self.address.is_some() {
                        *publisher = None;
                    }
                    return;
                }
                Err(e) if Instant::now() + pause >= deadline || self.address.is_none() => {
                    return warn!("publishing {topic}: {e}; giving up after {failures} retries");
                }
                Err(e) => {
                    if failures == 0 {
                        warn!("publishing {topic}: {e}; reconnecting to containerd");
                    }
                    failures += 1;
                    *publisher = None;
                    thread::sleep(pause);
                    pause = (pause * 2).min(RECONNECT_PAUSE_MAX);
                }
            }
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
            publisher: Mutex::new(Some(publisher)),
            address: std::env::var(TTRPC_ADDRESS_ENV).ok(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::{
        create_events,
        shim::events::ForwardRequest,
        ttrpc::{self, TtrpcContext},
        types::empty::Empty,
        Events as EventService,
    };
    use std::sync::{mpsc, Arc};

    /// containerd's event service: passes on the topic of each event.
    struct Recorder(Mutex<mpsc::Sender<String>>);

    impl EventService for Recorder {
        fn forward(&self, _: &TtrpcContext, request: ForwardRequest) -> ttrpc::Result<Empty> {
            let _ = self.0.lock().unwrap().send(request.envelope.topic.clone());
            Ok(Empty::new())
        }
    }

    #[test]
    fn events_reach_containerd_in_order_and_no_connection_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        // containerd's TTRPC_ADDRESS is a plain path.
        let address = dir.path().join("events.sock").display().to_string();
        let (tx, rx) = mpsc::channel();
        let mut server = ttrpc::Server::new()
            .bind(&format!("unix://{address}"))
            .unwrap()
            .register_service(create_events(Arc::new(Recorder(Mutex::new(tx)))));
        server.start().unwrap();

        let sink = Containerd {
            publisher: Mutex::new(Some(RemotePublisher::new(&address).unwrap())),
            address: Some(address.clone()),
            namespace: "default".into(),
        };
        let events: [Box<dyn Event>; 3] = [
            Box::new(TaskCreate::default()),
            Box::new(TaskStart::default()),
            Box::new(TaskExit::default()),
        ];
        for event in events {
            sink.publish(event);
            assert!(
                sink.publisher.lock().unwrap().is_none(),
                "a connection to containerd stayed open after the event"
            );
        }
        let topics: Vec<String> = rx.try_iter().collect();
        assert_eq!(topics, ["/tasks/create", "/tasks/start", "/tasks/exit"]);
        server.shutdown();
    }
}

//! Running a built [`Vmm`]: vCPU threads, the VMM thread's event loop,
//! seccomp, and stopping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::info;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::signal::Killable;

use super::{io_err, Vmm, VmmError};
use crate::seccomp::{self, ThreadKind};
use crate::vstate::vcpu::{self, ExitReason, VmExit};

/// Wakes the event loop when the VM must stop.
pub(super) struct ExitSubscriber(pub(super) Arc<VmExit>);

impl MutEventSubscriber for ExitSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.event(), EventSet::IN)) {
            self.0.fail(format!("cannot poll the exit event: {e:?}"));
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event().read();
    }
}

/// Stops a running VM from another thread (or a signal handler).
#[derive(Debug, Clone)]
pub struct StopHandle(pub(super) Arc<VmExit>);

impl StopHandle {
    /// Asks the VM to stop; [`Vmm::run`] returns [`ExitReason::Stopped`].
    pub fn stop(&self) {
        self.0.request(ExitReason::Stopped);
    }
}

impl Vmm {
    /// Runs the VM until the guest resets or powers off, the host stops it,
    /// or something fails. The calling thread becomes the VMM (device) thread.
    pub fn run(&mut self) -> Result<ExitReason, VmmError> {
        vcpu::register_kick_handler().map_err(io_err("cannot install the vCPU kick handler"))?;
        // Compiled at build time: nothing to build here.
        let filters = self.seccomp.then(|| {
            (
                seccomp::filter(ThreadKind::Vmm),
                seccomp::filter(ThreadKind::Vcpu),
            )
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for vcpu in self.vcpus.drain(..) {
            let (stop, exit) = (stop.clone(), self.exit.clone());
            let filter = filters.map(|f| f.1);
            let spawned = thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id()))
                .spawn(move || {
                    if let Some(filter) = filter {
                        if let Err(e) = seccomp::apply(filter) {
                            exit.fail(format!("vCPU {}: {e}", vcpu.id()));
                            return;
                        }
                    }
                    vcpu.run(&stop, &exit);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.exit.fail(format!("cannot start a vCPU thread: {e}"));
                    break;
                }
            }
        }
        let result = self.event_loop(filters.map(|f| f.0));
        stop.store(true, Ordering::SeqCst);
        for t in &threads {
            // ESRCH if the thread is already gone: fine.
            let _ = t.kill(vcpu::kick_signal());
        }
        for t in threads {
            let _ = t.join();
        }
        result?;
        match self.exit.reason() {
            Some(ExitReason::Error) | None => Err(VmmError::Guest(
                self.exit.error().unwrap_or_else(|| "unknown error".into()),
            )),
            Some(reason) => {
                info!("VM stopped: {reason:?}");
                Ok(reason)
            }
        }
    }

    fn event_loop(
        &mut self,
        filter: Option<seccompiler::BpfProgramRef<'static>>,
    ) -> Result<(), VmmError> {
        if let Some(filter) = filter {
            seccomp::apply(filter)?;
        }
        // Blocks in epoll_wait; returns early (0 events) on a signal.
        while self.exit.reason().is_none() {
            self.event_manager.run().map_err(VmmError::EventManager)?;
        }
        Ok(())
    }
}

//! The vsock device on the VMM thread's event loop: queue notifications
//! and the host sockets' readiness.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, error};
use vmm_sys_util::epoll::EventSet;

use super::device::{Vsock, EVENT_QUEUE, MUXER_TOKEN, RX_QUEUE, TX_QUEUE};

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.poll_queue_events(ops);
        let fd = self.muxer.epoll_fd();
        if let Err(e) = ops.add(Events::with_data_raw(fd, MUXER_TOKEN, EventSet::IN)) {
            error!("vsock: cannot poll the muxer: {e}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let token = events.data();
        if token == MUXER_TOKEN {
            self.process_backend();
            return;
        }
        match self.common.consume_queue_event(token) {
            Some(RX_QUEUE) => self.process_rx(),
            Some(TX_QUEUE) => {
                self.process_tx();
                self.process_rx();
            }
            Some(EVENT_QUEUE) => debug!("vsock: event queue notified"),
            _ => {}
        }
    }
}

impl AsRawFd for Vsock {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.muxer.epoll_fd()
    }
}

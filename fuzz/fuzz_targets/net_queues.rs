//! The virtio-net device: TX chains of any shape and length, RX buffers of
//! any shape, and frames of any length from the network side.
#![no_main]

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use firedoor_fuzz::{fuzzed_queue, guest_memory, Input};
use firedoor_vmm::devices::virtio::net::Net;
use firedoor_vmm::devices::virtio::{VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let Ok((tap, network)) = UnixDatagram::pair() else {
        return;
    };
    let mut input = Input(data);
    let mtu = 68 + input.u16() % 2000;
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    let mut dev = Net::new(OwnedFd::from(tap), [2, 0, 0, 0, 0, 1], mtu, irq).expect("net device");
    let frames = input.u8() % 4;
    for _ in 0..frames {
        let len = usize::from(input.u16()) % 4096;
        let _ = network.send(input.take(len));
    }
    let mem = guest_memory();
    let rx = fuzzed_queue(&mem, 0x1_0000, 0, &mut input);
    let tx = fuzzed_queue(&mem, 0x2_0000, 0x1_0000, &mut input);
    if dev.activate(mem.clone(), vec![rx, tx]).is_err() {
        return;
    }
    dev.process_tx();
    dev.process_rx();
    network.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 70_000];
    while let Ok(n) = network.recv(&mut buf) {
        assert!(
            n >= 14 && n <= usize::from(mtu) + 18,
            "frame of {n} bytes left for the tap"
        );
    }
    dev.reset();
});

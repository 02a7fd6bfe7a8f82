//! What the shim decodes from the agent, which runs in the untrusted guest:
//! ttrpc frame headers, the ttrpc response envelope, and each RPC's reply
//! message, then what the shim builds from them (containerd's cgroup
//! metrics from a stats reply).
#![no_main]

use firedoor_protocol::agent::{
    CheckResponse, CreateContainerResponse, ExecProcessResponse, ListProcessesResponse, OOMEvent,
    StatsContainerResponse, WaitProcessResponse,
};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

fn decode<M: Message>(bytes: &[u8]) -> Option<M> {
    M::parse_from_bytes(bytes).ok()
}

fuzz_target!(|data: &[u8]| {
    let (kind, rest) = data.split_first().unwrap_or((&0, &[]));
    if rest.len() >= ttrpc::proto::MESSAGE_HEADER_LENGTH {
        let header = ttrpc::MessageHeader::from(&rest[..ttrpc::proto::MESSAGE_HEADER_LENGTH]);
        std::hint::black_box(header.length as usize <= ttrpc::proto::MESSAGE_LENGTH_MAX);
    }
    // The envelope first (as the ttrpc client reads it), else the bare
    // reply: both are guest bytes.
    let payload = match decode::<ttrpc::Response>(rest) {
        Some(response) if kind & 0x80 != 0 => {
            if let Some(status) = response.status.as_ref() {
                std::hint::black_box((status.code(), status.message.len()));
            }
            response.payload
        }
        _ => rest.to_vec(),
    };
    match kind % 7 {
        0 => drop(decode::<CheckResponse>(&payload)),
        1 => drop(decode::<CreateContainerResponse>(&payload)),
        2 => drop(decode::<ExecProcessResponse>(&payload)),
        3 => drop(decode::<ListProcessesResponse>(&payload)),
        4 => drop(decode::<WaitProcessResponse>(&payload)),
        5 => drop(decode::<OOMEvent>(&payload)),
        _ => {
            if let Some(stats) = decode::<StatsContainerResponse>(&payload) {
                let metrics = firedoor_shim::task::to_metrics(&stats);
                let _ = metrics.write_to_bytes();
            }
        }
    }
});

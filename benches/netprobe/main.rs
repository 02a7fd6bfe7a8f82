//! `netprobe`, the in-pod end of `benches/net.rs` (see probe.rs):
//!
//!     netprobe serve                      sink on 5001, echo on 5002
//!     netprobe send IP MIB                prints `seconds S`
//!     netprobe rtt IP COUNT               prints `micros MEAN`
//!
//! Built by the bench with `rustc -C target-feature=+crt-static` (std only,
//! no name resolution), so it runs in the busybox image, which has no libc.

#[path = "probe.rs"]
mod probe;

use std::{net::SocketAddr, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let address = |ip: &str, port: u16| -> SocketAddr {
        format!("{ip}:{port}").parse().expect("an IPv4 address")
    };
    let number = |s: &str| -> usize { s.parse().expect("a number") };
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve"] => probe::serve(),
        ["send", ip, mib] => probe::send(address(ip, probe::SINK_PORT), number(mib))
            .map(|took| println!("seconds {:.6}", took.as_secs_f64())),
        ["rtt", ip, count] => probe::round_trip(address(ip, probe::ECHO_PORT), number(count))
            .map(|mean| println!("micros {:.1}", mean.as_secs_f64() * 1e6)),
        _ => {
            eprintln!("usage: netprobe serve | send IP MIB | rtt IP COUNT");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

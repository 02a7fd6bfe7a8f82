//! A minimal `log` backend writing to stderr, which for PID 1 is the serial
//! console the kernel opened. Each line carries the guest uptime so agent and
//! kernel messages line up.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;

/// Installs the console logger; later calls only change the level.
pub fn init(level: LevelFilter) {
    // Fails only when a logger is already set, which is the case we want to
    // tolerate (the level is adjusted after the command line is read).
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// The library chatter level: everything when the agent itself logs at debug.
fn debug_or_off() -> LevelFilter {
    if log::max_level() >= LevelFilter::Debug {
        log::max_level()
    } else {
        LevelFilter::Off
    }
}

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // ttrpc narrates every server start at info; keep it for debugging.
        let max = if metadata.target().starts_with("ttrpc") {
            log::max_level().min(LevelFilter::Warn).max(debug_or_off())
        } else {
            log::max_level()
        };
        metadata.level() <= max
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let uptime = crate::uptime().as_secs_f64();
        let line = format!(
            "[{uptime:12.6}] firedoor-agent {}: {}\n",
            record.level(),
            record.args()
        );
        // One write per line so concurrent threads do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

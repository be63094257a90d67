//! Free loopback ports for servers that must be told their port up front (a `redis-server`, a
//! service binary).
//!
//! Ports come from below the kernel's ephemeral range: a port the kernel hands out for port 0
//! is also what it hands out as the local port of outgoing connections, and with many tests
//! connecting at once such a port was often taken again before the server bound it. Below the
//! range only another test choosing the same random port can collide, and callers retry
//! start-up on a new port when it happens. Within one process a port is handed out once: one
//! service asks for several ports in a row (gRPC and admin), and the same random pick twice
//! made it refuse its own configuration.

use std::{
    collections::HashSet,
    net::TcpListener,
    sync::{LazyLock, Mutex},
};

/// The ports this process has handed out; none is handed out again.
static HANDED_OUT: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(Mutex::default);

/// Records `port` as handed out; false if it already was.
fn claim(port: u16) -> bool {
    HANDED_OUT
        .lock()
        .map(|mut handed_out| handed_out.insert(port))
        .unwrap_or(true)
}

/// Where the kernel's ephemeral range starts on Linux unless configured otherwise.
const DEFAULT_EPHEMERAL_START: u16 = 32768;
/// The lowest port handed out: well above the ports of installed services.
const LOWEST: u16 = 15000;

pub fn free_port() -> std::io::Result<u16> {
    let ceiling = ephemeral_start().unwrap_or(DEFAULT_EPHEMERAL_START);
    if ceiling > LOWEST + 1000 {
        for _ in 0..64 {
            let port = fastrand::u16(LOWEST..ceiling);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() && claim(port) {
                return Ok(port);
            }
        }
    }
    // Nothing free below the range (or no room there): let the kernel choose.
    loop {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        if claim(port) {
            return Ok(port);
        }
    }
}

fn ephemeral_start() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound_and_lies_below_the_ephemeral_range() -> std::io::Result<()> {
        let port = free_port()?;
        let ceiling = ephemeral_start().unwrap_or(DEFAULT_EPHEMERAL_START);
        assert!(port < ceiling, "{port} is in the ephemeral range");
        TcpListener::bind(("127.0.0.1", port))?;
        Ok(())
    }

    #[test]
    fn a_process_never_gets_the_same_port_twice() -> std::io::Result<()> {
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let port = free_port()?;
            assert!(seen.insert(port), "port {port} was handed out twice");
        }
        Ok(())
    }
}

//! Free loopback ports for servers that must be told their port up front (a `redis-server`, a
//! service binary). Another process could take the port between this call and the bind; the
//! window is tiny and callers retry start-up on a new port when it happens.

use std::net::TcpListener;

pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

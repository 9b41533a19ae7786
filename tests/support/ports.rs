//! Free loopback ports for the servers the tests start, from one registry per test
//! process. A probed port is free only until the server binds it, and a server restarted
//! on its old port needs that port still free: without the registry, a server one test
//! starts (Redis, moto, a Crypto Service) could take a port another test, running in
//! parallel, had just chosen or was about to bind again.

use std::net::TcpListener;
use std::sync::Mutex;

/// Ports handed out, or bound by a server of ours, in this process.
static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn taken_ports() -> std::sync::MutexGuard<'static, Vec<u16>> {
    TAKEN.lock().unwrap_or_else(|p| p.into_inner())
}

/// `n` distinct free loopback ports, none handed out or taken before in this process.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut taken = taken_ports();
    // Held together, so the kernel gives `n` different ports.
    let mut listeners = Vec::new();
    while listeners.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if !taken.contains(&port) {
            listeners.push(listener);
        }
    }
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    taken.extend(&ports);
    ports
}

/// One free loopback port (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// Records `port`, which a server of ours bound by itself (port 0), so that no other
/// server is handed it: the server may be restarted on it.
pub fn taken(port: u16) {
    let mut taken = taken_ports();
    if !taken.contains(&port) {
        taken.push(port);
    }
}

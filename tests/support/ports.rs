//! Ports for tests, held, never borrowed (shared with the benches, which
//! include the Postgres support on its own).
#![allow(dead_code)]

/// A loopback port held for the whole test: bound but never listening, so
/// connecting to it is refused (nothing listens) and no other test is handed
/// it meanwhile. Bound with SO_REUSEADDR, so a program under test may still
/// listen on it (`serve --listen`, doctor's port check). No port is taken
/// free, released, and hoped to be free later.
pub struct ReservedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ReservedPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        ReservedPort {
            _socket: socket,
            port,
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`: where a connection is refused.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        Self::new()
    }
}

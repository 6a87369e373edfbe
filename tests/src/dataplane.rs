//! The three-namespace data plane shared by the kernel tests and the demo:
//!
//!   private 10.20.1.10/24 --- 10.20.1.1 [nat: natd] ens5 198.51.100.2 --- 198.51.100.1 internet
//!
//! The internet namespace has no route back to 10.20.0.0/16, so only masquerading can
//! make replies arrive. Servers in the internet and private namespaces answer every
//! connection with the peer address they see.

use crate::emulator::Emulator;
use crate::netns::Netns;
use crate::world::{NatHost, World};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// The server in the internet namespace.
pub const SERVER: &str = "198.51.100.1:8080";
/// A server in the private namespace (for inbound tests).
pub const PRIVATE: &str = "10.20.1.10:2222";
/// The NAT instance's public address, as the internet sees it.
pub const NAT_PUBLIC: &str = "198.51.100.2";

/// The NAT host and its two neighbours.
#[derive(Debug)]
pub struct DataPlane {
    pub host: NatHost,
    pub private: Netns,
    pub internet: Netns,
}

impl DataPlane {
    /// Wires a NAT host for `instance` between a private and an internet namespace.
    pub async fn new(emu: &Emulator, world: &World, instance: &str) -> Self {
        let host = NatHost::new(emu, world, instance).await;
        let private = Netns::new("priv");
        let internet = Netns::new("inet");
        private.link("p0", "10.20.1.10/24", &host.ns, "in0", "10.20.1.1/24");
        private.sh("ip route add default via 10.20.1.1");
        host.ns.link(
            "ens5",
            &format!("{NAT_PUBLIC}/24"),
            &internet,
            "i0",
            "198.51.100.1/24",
        );
        host.ns
            .sh(&format!("ip link set ens5 address {}", host.mac));
        serve_peer_address(&internet, SERVER);
        serve_peer_address(&private, PRIVATE);
        Self {
            host,
            private,
            internet,
        }
    }
}

/// A TCP server in `ns` at `addr` that answers each connection with the peer address
/// it sees, then closes.
pub fn serve_peer_address(ns: &Netns, addr: &str) {
    let addr: SocketAddr = addr.parse().expect("address");
    let listener = ns.run(move || TcpListener::bind(addr).expect("bind"));
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let peer = c
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = c.write_all(peer.as_bytes());
        }
    });
}

/// Connects from `ns` to `addr`; returns what the server said, or the error.
pub fn fetch(ns: &Netns, addr: &str) -> Result<String, String> {
    fetch_from(ns, None, addr)
}

/// Connects from `ns` to `addr`, from source address `src` when given; returns what the
/// server said, or the error.
pub fn fetch_from(ns: &Netns, src: Option<&str>, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().expect("address");
    let src: Option<SocketAddr> = src.map(|s| format!("{s}:0").parse().expect("source"));
    ns.run(move || {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .map_err(|e| e.to_string())?;
        if let Some(src) = src {
            sock.bind(&src.into())
                .map_err(|e| format!("bind {src}: {e}"))?;
        }
        sock.connect_timeout(&addr.into(), Duration::from_millis(800))
            .map_err(|e| e.to_string())?;
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
}

/// A TCP server in `ns` at `addr` for long-lived connections: it first sends the peer
/// address it sees (one line), then echoes every line back, except [`PEER_QUERY`],
/// which it answers with the peer's address and port as it sees them now.
pub fn serve_echo(ns: &Netns, addr: &str) {
    let addr: SocketAddr = addr.parse().expect("address");
    let listener = ns.run(move || TcpListener::bind(addr).expect("bind"));
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let peer_addr = c.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                let peer = c
                    .peer_addr()
                    .map(|p| p.ip().to_string())
                    .unwrap_or_default();
                let mut w = match c.try_clone() {
                    Ok(w) => w,
                    Err(_) => return,
                };
                if writeln!(w, "{peer}").is_err() {
                    return;
                }
                let mut r = std::io::BufReader::new(c);
                let mut line = String::new();
                while std::io::BufRead::read_line(&mut r, &mut line).is_ok_and(|n| n > 0) {
                    let answer = if line.trim_end() == PEER_QUERY {
                        format!("{peer_addr}\n")
                    } else {
                        line.clone()
                    };
                    if w.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
}

/// The line a [`serve_echo`] server answers with the peer's address and port.
pub const PEER_QUERY: &str = "peer?";

/// One long-lived connection to a [`serve_echo`] server.
#[derive(Debug)]
pub struct Stream {
    reader: std::io::BufReader<TcpStream>,
    writer: TcpStream,
    /// The address the server saw when the connection opened.
    pub seen: String,
    sent: u64,
}

impl Stream {
    /// Opens a connection from `ns` to `addr`.
    pub fn open(ns: &Netns, addr: &str) -> Result<Self, String> {
        let addr: SocketAddr = addr.parse().expect("address");
        let s = ns.run(move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(800)).map_err(|e| e.to_string())
        })?;
        Self::ready(s)
    }

    /// A connected stream, once the server's first line is read.
    fn ready(s: TcpStream) -> Result<Self, String> {
        // Long enough to ride out a failover's retransmissions; a reset or an end of
        // stream fails at once.
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .map_err(|e| e.to_string())?;
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        let mut reader = std::io::BufReader::new(s);
        let mut seen = String::new();
        std::io::BufRead::read_line(&mut reader, &mut seen).map_err(|e| e.to_string())?;
        Ok(Self {
            reader,
            writer,
            seen: seen.trim().to_string(),
            sent: 0,
        })
    }

    /// Opens a connection from `ns` to `addr` from local port `port` (to make the NAT
    /// remap ports: two hosts using the same port to one destination).
    pub fn open_from(ns: &Netns, port: u16, addr: &str) -> Result<Self, String> {
        let addr: SocketAddr = addr.parse().expect("address");
        let s = ns.run(move || -> Result<TcpStream, String> {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .map_err(|e| e.to_string())?;
            sock.set_reuse_address(true).map_err(|e| e.to_string())?;
            sock.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())
                .map_err(|e| format!("bind :{port}: {e}"))?;
            sock.connect_timeout(&addr.into(), Duration::from_millis(800))
                .map_err(|e| e.to_string())?;
            Ok(sock.into())
        })?;
        Self::ready(s)
    }

    /// The address and port the server sees this connection from, now.
    pub fn seen_from(&mut self) -> Result<String, String> {
        self.writer
            .write_all(format!("{PEER_QUERY}\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut back = String::new();
        match std::io::BufRead::read_line(&mut self.reader, &mut back) {
            Ok(0) => Err("closed by the other end".into()),
            Ok(_) => Ok(back.trim().to_string()),
            Err(e) => Err(format!("receive: {e}")),
        }
    }

    /// Sends one line and reads it back.
    pub fn exchange(&mut self) -> Result<(), String> {
        self.sent += 1;
        let msg = format!("line {}\n", self.sent);
        self.writer
            .write_all(msg.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut back = String::new();
        match std::io::BufRead::read_line(&mut self.reader, &mut back) {
            Ok(0) => Err("closed by the other end".into()),
            Ok(_) if back == msg => Ok(()),
            Ok(_) => Err(format!("echo {back:?} for {msg:?}")),
            Err(e) => Err(format!("receive: {e}")),
        }
    }
}

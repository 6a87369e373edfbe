//! Many concurrent TCP connections to one destination, for the lab's egress-address
//! benchmark (run inside a namespace with `ip netns exec`):
//!
//! - `lab-flows serve ADDR`: listens on ADDR (SO_REUSEPORT, so several processes share
//!   it and each stays under the per-process file limit), writes each connection the
//!   address it sees (`ip:port`, one line) and holds it open. Prints `ready` once
//!   listening; exits when stdin closes.
//! - `lab-flows open ADDR N [CONCURRENCY] [TIMEOUT_MS]`: opens N connections to ADDR,
//!   CONCURRENCY at a time, each given TIMEOUT_MS to connect and read the server's line,
//!   and holds every one that succeeded. Prints one JSON line: how many are open, by the
//!   public address the server saw, and why the others failed. Exits (closing them
//!   all) when stdin closes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

fn usage() -> ! {
    eprintln!("usage: lab-flows serve ADDR | lab-flows open ADDR N [CONCURRENCY] [TIMEOUT_MS]");
    std::process::exit(2)
}

/// Ends the process (closing every connection) when stdin reaches its end.
fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
}

async fn serve(addr: SocketAddr) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseport(true).expect("SO_REUSEPORT");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("bind");
    let listener = socket.listen(4096).expect("listen");
    println!("ready");
    let mut held = Vec::new();
    loop {
        match listener.accept().await {
            Ok((c, peer)) => {
                // A full send buffer is impossible for one short line.
                let _ = c.try_write(format!("{peer}\n").as_bytes());
                held.push(c);
            }
            // Out of descriptors: keep what is held, try again later.
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection: connected, and the server's line (the address it sees) read.
async fn one(addr: SocketAddr, timeout: Duration) -> Result<(TcpStream, String), String> {
    let attempt = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            use tokio::io::AsyncReadExt;
            match s.read(&mut byte).await {
                Ok(0) => return Err("closed".to_string()),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => line.push(byte[0]),
                Err(e) => return Err(format!("read: {}", e.kind())),
            }
        }
        Ok((s, String::from_utf8_lossy(&line).into_owned()))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| "timeout".to_string())?
}

async fn open(addr: SocketAddr, n: usize, concurrency: usize, timeout: Duration) {
    let mut held = Vec::with_capacity(n);
    let mut by_ip: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut running = tokio::task::JoinSet::new();
    let mut started = 0;
    let begun = std::time::Instant::now();
    while started < n || !running.is_empty() {
        while started < n && running.len() < concurrency {
            running.spawn_local(one(addr, timeout));
            started += 1;
        }
        match running.join_next().await {
            Some(Ok(Ok((s, seen)))) => {
                let ip = seen.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(&seen);
                *by_ip.entry(ip.to_string()).or_default() += 1;
                held.push(s);
            }
            Some(Ok(Err(e))) => *errors.entry(e).or_default() += 1,
            Some(Err(e)) => *errors.entry(format!("task: {e}")).or_default() += 1,
            None => {}
        }
    }
    let failed: usize = errors.values().sum();
    println!(
        "{{\"open\":{},\"failed\":{failed},\"secs\":{:.1},\"seen\":{},\"errors\":{}}}",
        held.len(),
        begun.elapsed().as_secs_f64(),
        json(&by_ip),
        json(&errors)
    );
    // `held` stays open until stdin closes and the process exits.
    std::future::pending::<()>().await
}

fn json(m: &BTreeMap<String, usize>) -> String {
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
    format!("{{{}}}", parts.join(","))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = |s: Option<&String>| -> SocketAddr {
        s.and_then(|a| a.parse().ok()).unwrap_or_else(|| usage())
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    exit_when_stdin_closes();
    // As many descriptors as this process may have.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    match args.first().map(String::as_str) {
        Some("serve") => local.block_on(&rt, serve(addr(args.get(1)))),
        Some("open") => {
            let n = args
                .get(2)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage());
            let concurrency = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(500);
            let timeout = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(3000);
            local.block_on(
                &rt,
                open(
                    addr(args.get(1)),
                    n,
                    concurrency,
                    Duration::from_millis(timeout),
                ),
            )
        }
        _ => usage(),
    }
}

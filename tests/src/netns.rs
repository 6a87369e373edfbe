//! Network namespaces for tests: created with `ip netns add`, deleted on drop (also
//! when the test panics), with helpers to run code and commands inside them.

use nix::sched::{CloneFlags, setns};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace owned by the test.
#[derive(Debug)]
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
    /// Deleted on drop (false for a handle on someone else's namespace).
    owned: bool,
}

impl Netns {
    /// Creates a fresh namespace with loopback up. `role` is a short label in its name.
    pub fn new(role: &str) -> Self {
        let name = format!(
            "natdt-{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name, owned: true };
        ns.sh("ip link set lo up");
        ns
    }

    /// A handle on an existing namespace owned elsewhere: dropping it deletes nothing.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            owned: false,
        }
    }

    /// Runs a shell command inside the namespace; panics with its output on failure.
    pub fn sh(&self, script: &str) -> String {
        let out =
            run_ok(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-ec", script]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell command inside the namespace and returns its output, failed or not.
    pub fn sh_status(&self, script: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", script])
            .output()
            .expect("run ip netns exec")
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it creates live there.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = File::open(&path).expect("open netns");
            setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns")
    }

    /// Makes 127.0.0.1:`port` inside the namespace reach 127.0.0.1:`port` of the test's
    /// own namespace (where the emulator and IMDS fixtures listen).
    pub fn forward_loopback(&self, port: u16) {
        self.forward(std::net::SocketAddr::from(([127, 0, 0, 1], port)), port);
    }

    /// Makes `listen` (an address inside the namespace) reach 127.0.0.1:`port` of the
    /// test's own namespace.
    pub fn forward(&self, listen: std::net::SocketAddr, port: u16) {
        let listener = self.run(move || TcpListener::bind(listen).expect("bind in netns"));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(inner) = conn else { return };
                std::thread::spawn(move || {
                    let Ok(outer) = TcpStream::connect(("127.0.0.1", port)) else {
                        return;
                    };
                    pipe(inner, outer);
                });
            }
        });
    }

    /// Adds a veth pair between `self` (interface `a`, address `a_addr` as CIDR) and
    /// `other` (`b`, `b_addr`), both up.
    pub fn link(&self, a: &str, a_addr: &str, other: &Netns, b: &str, b_addr: &str) {
        self.sh(&format!(
            "ip link add {a} type veth peer name {b} netns {}",
            other.name
        ));
        self.sh(&format!(
            "ip addr add {a_addr} dev {a} && ip link set {a} up"
        ));
        other.sh(&format!(
            "ip addr add {b_addr} dev {b} && ip link set {b} up"
        ));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // Best effort, so a failing test still cleans up everything it can.
        kill_and_delete(&self.name);
    }
}

/// Kills (SIGKILL) every process in namespace `name`, as a machine dies: best effort,
/// and silent when the namespace is gone already (a killed instance's).
pub fn kill_all_in(name: &str) {
    if !std::path::Path::new(&format!("/run/netns/{name}")).exists() {
        return;
    }
    let _ = Command::new("sh")
        .args(["-c", &format!("ip netns pids {name} | xargs -r kill -9")])
        .stderr(std::process::Stdio::null())
        .status();
}

/// [`kill_all_in`], then deletes the namespace (best effort, silent).
pub fn kill_and_delete(name: &str) {
    kill_all_in(name);
    if !std::path::Path::new(&format!("/run/netns/{name}")).exists() {
        return;
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(std::process::Stdio::null())
        .status();
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (mut a2, mut b2) = (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
    let t = std::thread::spawn(move || copy(&mut a2, &mut b2));
    let (mut a, mut b) = (a, b);
    copy(&mut b, &mut a);
    let _ = t.join();
}

fn copy(from: &mut TcpStream, to: &mut TcpStream) {
    let mut buf = [0u8; 16384];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

//! Many concurrent TCP connections to one destination through the lab, with the
//! `lab-flows` helper: several server processes in the internet namespace (SO_REUSEPORT)
//! and one client process per host, because one process may hold only so many
//! descriptors. What is opened stays open until the [`Flows`] is dropped.

use crate::netns::Netns;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Child, ChildStdout, Command, Stdio};

/// The destination the servers listen on: the internet's address, a port of its own.
pub const DEST: &str = "198.51.100.1:7001";

/// Server processes (each holds its share of the connections).
const SERVERS: usize = 6;

/// One `lab-flows` process in a namespace: its stdin held open (closing it ends the
/// process and its connections), its stdout read line by line.
struct Proc {
    child: Child,
    out: std::io::BufReader<ChildStdout>,
}

impl Proc {
    fn spawn(ns: &str, args: &[&str]) -> Self {
        let exe = crate::bin("lab-flows");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        Self { child, out }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).expect("read");
        l.trim().to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Connections held open, and what opening them gave.
pub struct Flows {
    procs: Vec<Proc>,
    /// Open at once.
    pub open: u64,
    /// Not opened (connect or the server's first line timed out, or failed).
    pub failed: u64,
    /// The public address the server saw -> connections.
    pub seen: BTreeMap<String, u64>,
    /// Why the others failed -> how many.
    pub errors: BTreeMap<String, u64>,
    /// How long the slowest host took to open its share, seconds.
    pub secs: f64,
}

impl Flows {
    /// Opens `per_host` connections from each of `hosts` (namespace names) to [`DEST`],
    /// served in the namespace `internet`, 500 at a time per host, each given 3 s.
    pub fn open(internet: &str, hosts: &[Netns], per_host: usize) -> Self {
        let mut procs: Vec<Proc> = (0..SERVERS)
            .map(|_| {
                let mut p = Proc::spawn(internet, &["serve", DEST]);
                assert_eq!(p.line(), "ready");
                p
            })
            .collect();
        let n = per_host.to_string();
        let clients: Vec<Proc> = hosts
            .iter()
            .map(|h| Proc::spawn(&h.name, &["open", DEST, &n, "500", "3000"]))
            .collect();
        let results: Vec<(Proc, serde_json::Value)> = std::thread::scope(|s| {
            let handles: Vec<_> = clients
                .into_iter()
                .map(|mut c| {
                    s.spawn(move || {
                        let l = c.line();
                        let v: serde_json::Value = serde_json::from_str(&l)
                            .unwrap_or_else(|e| panic!("lab-flows: {e}: {l:?}"));
                        (c, v)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut f = Flows {
            procs: Vec::new(),
            open: 0,
            failed: 0,
            seen: BTreeMap::new(),
            errors: BTreeMap::new(),
            secs: 0.0,
        };
        for (p, v) in results {
            f.open += v["open"].as_u64().unwrap_or(0);
            f.failed += v["failed"].as_u64().unwrap_or(0);
            f.secs = f.secs.max(v["secs"].as_f64().unwrap_or(0.0));
            for (k, n) in v["seen"].as_object().into_iter().flatten() {
                *f.seen.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
            for (k, n) in v["errors"].as_object().into_iter().flatten() {
                *f.errors.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
            procs.push(p);
        }
        f.procs = procs;
        f
    }
}

impl Drop for Flows {
    fn drop(&mut self) {
        // Clients first, so the servers see their peers go.
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
    }
}

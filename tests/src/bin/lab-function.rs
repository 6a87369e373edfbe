//! The function's stand-in in the lab: a long-lived handler run the way the seed
//! advises for a VPC Lambda function. Its init code runs once: it reads the database
//! secret from Secrets Manager by the service's regional name (resolved and routed as
//! the VPC resolves and routes it: the interface endpoint with private DNS, otherwise the
//! public side through a NAT) and opens the database connection with the secret's
//! password. Each invocation reuses both: one query on the open connection, and one
//! request to the internet server.
//!
//! Started in a lab namespace by `Lab::function` (`ip netns exec`, so the namespace's
//! `/etc/hosts` applies):
//! `lab-function SECRET_ID DB_HOST DB_USER INTERNET_ADDR`.
//! Protocol on stdin/stdout, one line each: after init it prints
//! `ready secret_ms=.. db_ms=..` (or `init-failed REASON` and exits 1, as a Lambda
//! init error); then for each `invoke` line it prints
//! `ok db=.. internet=.. ms=..` or `error db=.. internet=.. ms=..`.

#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// How long one database answer or internet request may take.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Secrets Manager's regional name, as the function's SDK resolves it.
const SECRETS_MANAGER: &str = "secretsmanager.eu-west-1.amazonaws.com";

/// The open database connection: psql on a pipe, connected once at init.
struct Connection {
    input: ChildStdin,
    lines: Receiver<String>,
    /// psql; it exits when its stdin closes, with this process.
    _psql: Child,
}

impl Connection {
    fn open(host: &str, user: &str, password: &str) -> Result<Self, String> {
        let psql = std::env::var("LAB_PSQL").unwrap_or_else(|_| "psql".into());
        let mut child = Command::new(psql)
            .arg(format!(
                "host={host} port=5432 user={user} dbname=postgres connect_timeout=3"
            ))
            .args(["-X", "-q", "-A", "-t"])
            .env("PGPASSWORD", password)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("psql: {e}"))?;
        let (tx, lines) = channel();
        let out = child.stdout.take().ok_or("psql: no stdout")?;
        let err = child.stderr.take().ok_or("psql: no stderr")?;
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
            let _ = tx.send("\u{0}closed".into());
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("\u{0}{l}"));
            }
        });
        let input = child.stdin.take().ok_or("psql: no stdin")?;
        let mut c = Self {
            input,
            lines,
            _psql: child,
        };
        c.query("select 1")?;
        Ok(c)
    }

    /// One statement on the open connection: its answer, or why it has none.
    fn query(&mut self, sql: &str) -> Result<String, String> {
        writeln!(self.input, "{sql};\n\\echo __end__").map_err(|e| format!("connection: {e}"))?;
        let deadline = Instant::now() + TIMEOUT;
        let mut answer = Vec::new();
        let mut error = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l == "__end__" => break,
                Ok(l) if l == "\u{0}closed" => return Err("connection closed".into()),
                Ok(l) if l.starts_with('\u{0}') => error = Some(l[1..].to_string()),
                Ok(l) => answer.push(l),
                Err(_) => return Err("timeout".into()),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(answer.join("\n")),
        }
    }
}

/// The function's init: the secret, then the connection.
async fn init(secret: &str, host: &str, user: &str) -> Result<(Connection, u128, u128), String> {
    let t = Instant::now();
    // The function's execution role's credentials (the emulator's test key here).
    let key = natd_tests::emulator::TEST_KEY;
    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .endpoint_url(format!("http://{SECRETS_MANAGER}:443"))
        .http_client(natd::cloud::http_client())
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::from_keys(key.0, key.1, None),
            ),
        )
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(TIMEOUT)
                .operation_timeout(TIMEOUT)
                .build(),
        )
        .build();
    let value = aws_sdk_secretsmanager::Client::new(&config)
        .get_secret_value()
        .secret_id(secret)
        .send()
        .await
        .map_err(|e| format!("secret {secret}: {}", root_cause(&e)))?;
    let value = value.secret_string().ok_or("the secret has no string")?;
    let password = serde_json::from_str::<serde_json::Value>(value)
        .ok()
        .and_then(|v| v["password"].as_str().map(str::to_string))
        .ok_or("the secret has no password field")?;
    let secret_ms = t.elapsed().as_millis();
    let t = Instant::now();
    let connection =
        Connection::open(host, user, &password).map_err(|e| format!("database {host}: {e}"))?;
    Ok((connection, secret_ms, t.elapsed().as_millis()))
}

/// What an error comes down to: its innermost cause, or the service's own message.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let words = cause.to_string();
    if words.contains("service error") {
        format!("{}", aws_sdk_secretsmanager::error::DisplayErrorContext(e))
    } else {
        words
    }
}

/// One request to the internet server: the address it saw.
fn internet(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut seen = String::new();
    s.read_to_string(&mut seen).map_err(|e| e.to_string())?;
    Ok(seen)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [secret, host, user, server] = args.as_slice() else {
        eprintln!("usage: lab-function SECRET_ID DB_HOST DB_USER INTERNET_ADDR");
        std::process::exit(2);
    };
    let Ok(server) = server.parse::<SocketAddr>() else {
        eprintln!("lab-function: INTERNET_ADDR {server:?} is not an address:port");
        std::process::exit(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lab-function: {e}");
            std::process::exit(1);
        }
    };
    let mut out = std::io::stdout();
    let mut connection = match rt.block_on(init(secret, host, user)) {
        Ok((c, secret_ms, db_ms)) => {
            let _ = writeln!(out, "ready secret_ms={secret_ms} db_ms={db_ms}");
            c
        }
        Err(e) => {
            let _ = writeln!(out, "init-failed {}", e.replace('\n', " "));
            std::process::exit(1);
        }
    };
    let _ = out.flush();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        if line.trim() != "invoke" {
            continue;
        }
        let t = Instant::now();
        let db = connection.query("select 'answered'");
        let net = internet(server);
        let word = |r: &Result<String, String>| match r {
            Ok(v) => v.clone(),
            Err(e) => format!("({})", e.replace(' ', "_")),
        };
        let verdict = if db.is_ok() && net.is_ok() {
            "ok"
        } else {
            "error"
        };
        let _ = writeln!(
            out,
            "{verdict} db={} internet={} ms={:.2}",
            word(&db),
            word(&net),
            t.elapsed().as_secs_f64() * 1000.0
        );
        let _ = out.flush();
    }
}

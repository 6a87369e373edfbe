//! The AWS emulator and the IMDSv2 fixture, as child processes that die with the test.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Region every test uses.
pub const REGION: &str = "eu-west-1";
/// Credentials the emulator accepts while IAM is not enforced.
pub const TEST_KEY: (&str, &str) = ("testing", "testing");

/// Whether an API operation (as in [`Emulator::calls`]) changes anything: everything
/// but Describe*, Get*, List* and REST GETs.
pub fn is_mutating(op: &str) -> bool {
    !["Describe", "Get", "List", "GET "]
        .iter()
        .any(|p| op.starts_with(p))
}

/// A running `emulator/aws_cli_server.py`: the AWS CLI answering one command a line.
struct CliServer {
    _proc: Proc,
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
}

/// The test process's idle CLI servers: a call takes one (or starts one when all are
/// busy, e.g. a test's threads calling at once) and puts it back.
static CLI_SERVERS: std::sync::Mutex<Vec<CliServer>> = std::sync::Mutex::new(Vec::new());

/// The AWS CLI with `args` (global options included) and the key `key`, run by a
/// long-lived CLI process: its output and exit status, as a process of its own would
/// give them. A fresh `aws` process costs about a second of CPU before its request.
pub fn aws_cli(args: &[&str], key: (&str, &str)) -> std::process::Output {
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;
    let idle = CLI_SERVERS.lock().unwrap().pop();
    let mut server = idle.unwrap_or_else(|| {
        let mut child = Command::new(crate::python())
            .arg(crate::root().join("tests/emulator/aws_cli_server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Not the test's own stderr: the runner waits for it to close.
            .stderr(Stdio::null())
            .spawn()
            .expect("start the AWS CLI server");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        CliServer {
            _proc: Proc(child),
            input,
            output,
        }
    });
    let request = serde_json::json!({"args": args, "key": [key.0, key.1]});
    writeln!(server.input, "{request}").expect("send to the AWS CLI server");
    let mut line = String::new();
    let read = server
        .output
        .read_line(&mut line)
        .expect("read from the AWS CLI server");
    assert!(read > 0, "the AWS CLI server ended (aws {args:?})");
    let answer: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the AWS CLI server answered {line:?}: {e}"));
    CLI_SERVERS.lock().unwrap().push(server);
    let text = |k: &str| answer[k].as_str().unwrap_or_default().as_bytes().to_vec();
    let rc = answer["rc"].as_i64().unwrap_or(255) as i32;
    std::process::Output {
        status: std::process::ExitStatus::from_raw((rc & 0xff) << 8),
        stdout: text("stdout"),
        stderr: text("stderr"),
    }
}

/// A child process that is killed when dropped.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd`, waits for "Running on http://127.0.0.1:PORT" on its stderr, returns
/// the child and the port. The rest of stderr is drained in the background.
fn spawn_server(mut cmd: Command, what: &str) -> (Proc, u16) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let port = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.split("Running on http://").nth(1) {
                    let port = rest.rsplit(':').next().unwrap().trim().parse().unwrap();
                    break port;
                }
                seen.push(line);
            }
            _ => {
                let _ = child.kill();
                panic!("{what} exited before listening:\n{}", seen.join("\n"));
            }
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), port)
}

/// The tests' default window of eventual consistency, in seconds: natd's and natctl's
/// EC2 and IAM reads answer the state this long ago after a change (AWS gives no
/// bound; most changes show within a second, some take several).
pub const STALE_SECS: &str = "1";

/// One emulator server, private to the test that started it.
#[derive(Debug)]
pub struct Emulator {
    _proc: Proc,
    /// The key fixtures use to read the emulator once IAM is enforced.
    admin: std::sync::Mutex<(String, String)>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Emulator {
    /// Starts the emulator with IAM not enforced.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts the emulator; with `Some(n)`, IAM is enforced after the first `n` calls.
    pub fn start_with(enforce_iam_after: Option<u32>) -> Self {
        Self::start_env(enforce_iam_after, &[])
    }

    /// Starts the emulator with settings of `emulator/moto_natd.py` in `env` (e.g.
    /// `NATD_EMU_IAM_PROPAGATION_SECS`).
    pub fn start_env(enforce_iam_after: Option<u32>, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(crate::python());
        // Eventual consistency on in every test (`NATD_EMU_STALE_SECS`, moto_natd.py):
        // natd's and natctl's reads see each change STALE_SECS late.
        if std::env::var_os("NATD_EMU_STALE_SECS").is_none() {
            cmd.env("NATD_EMU_STALE_SECS", STALE_SECS);
        }
        cmd.envs(env.iter().copied());
        cmd.arg(crate::root().join("tests/emulator/moto_natd.py"))
            .args(["-H", "127.0.0.1", "-p", "0"]);
        if let Some(n) = enforce_iam_after {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let (proc, port) = spawn_server(cmd, "moto");
        let admin = std::sync::Mutex::new((TEST_KEY.0.to_string(), TEST_KEY.1.to_string()));
        Self {
            _proc: proc,
            admin,
            port,
        }
    }

    /// Sets the key the IMDS fixtures use (needed once IAM is enforced).
    pub fn set_admin_key(&self, id: &str, secret: &str) {
        *self.admin.lock().unwrap() = (id.to_string(), secret.to_string());
    }

    /// The endpoint URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SDK configuration for the emulator with the given key.
    pub fn sdk_with(&self, key: (&str, &str)) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.url())
            .http_client(natd::cloud::http_client())
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(
                    Credentials::from_keys(key.0, key.1, None),
                ),
            )
            .build()
    }

    /// SDK configuration with the default test key.
    pub fn sdk(&self) -> SdkConfig {
        self.sdk_with(TEST_KEY)
    }

    /// The AWS CLI from the emulator's venv (an independent client), pointed at the
    /// emulator with the admin key: what it prints and its exit status, failures
    /// included. One long-lived CLI process answers ([`aws_cli`]), not one per call.
    pub fn aws_output(&self, args: &[&str]) -> std::process::Output {
        let key = self.admin.lock().unwrap().clone();
        let url = self.url();
        let mut all = vec![
            "--endpoint-url",
            &url,
            "--region",
            REGION,
            "--output",
            "json",
        ];
        all.extend_from_slice(args);
        aws_cli(&all, (&key.0, &key.1))
    }

    /// Runs the AWS CLI ([`Emulator::aws_output`]), asserts it succeeded, and returns
    /// its JSON output.
    pub fn aws(&self, args: &[&str]) -> serde_json::Value {
        let out = self.aws_output(args);
        assert!(
            out.status.success(),
            "aws {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Every API operation the emulator has answered so far, in order (its call log).
    pub fn calls(&self) -> Vec<String> {
        serde_json::from_str(&self.get("/natd-test/calls")).expect("call log")
    }

    /// The requests the emulator refused because they break the service's API model
    /// (`tests/emulator/validate.py`), in order: each `{"op", "code", "message"}`.
    pub fn refused(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.get("/natd-test/refused")).expect("refusals")
    }

    /// An emulator for the lab: natctl's and natd's reads are eventually consistent, as
    /// in every test (the pair's decisions allow for it: `consistency_window_ms`).
    /// CloudWatch evaluates the alarms every 5 s instead of every minute
    /// (`NATD_EMU_ALARM_EVAL_SECS`), so a lab test sees an alarm fire in seconds.
    pub fn for_lab() -> Self {
        Self::start_env(None, &[("NATD_EMU_ALARM_EVAL_SECS", "5")])
    }

    /// How many reads the emulator answered from an older state (eventual consistency,
    /// `NATD_EMU_STALE_SECS`), and the window.
    pub fn stale_served(&self) -> (f64, u64) {
        let v: serde_json::Value =
            serde_json::from_str(&self.get("/natd-test/stale")).expect("stale reads");
        (
            v["window_secs"].as_f64().unwrap_or_default(),
            v["served"].as_u64().unwrap_or_default(),
        )
    }

    /// Waits out the window of eventual consistency (`NATD_EMU_STALE_SECS`), so the
    /// changes made so far show in natd's and natctl's reads.
    pub async fn settle(&self) {
        let (window, _) = self.stale_served();
        tokio::time::sleep(std::time::Duration::from_secs_f64(window + 0.1)).await;
    }

    /// SDK configuration as natd's: its user agent carries "app/natd", so its reads see
    /// the emulator's eventual consistency.
    pub fn sdk_as_natd(&self) -> SdkConfig {
        self.sdk()
            .into_builder()
            .app_name(aws_config::AppName::new("natd").expect("app name"))
            .build()
    }

    /// The calls whose user agent carries `agent` (natd's carry "app/natd"), in order.
    pub fn calls_by(&self, agent: &str) -> Vec<String> {
        serde_json::from_str(&self.get(&format!("/natd-test/calls?agent={agent}")))
            .expect("call log")
    }

    /// From now on, carries out only the next `after` mutating calls and answers every
    /// later one 503 without carrying it out, as if the client died after its change
    /// number `after`; `None` ends that.
    pub fn cut_after(&self, after: Option<usize>) {
        let n = after.map_or(-1, |n| n as i64);
        self.get(&format!("/natd-test/cut?after={n}"));
    }

    /// Makes the AWS endpoint unavailable to natd (requests carrying "app/natd" in their
    /// user agent) for `secs` seconds: answered 503 at once, or after hanging until the
    /// outage ends when `hang`. IMDS and the tests' own clients are unaffected.
    pub fn natd_outage(&self, secs: f64, hang: bool) {
        let mode = if hang { "hang" } else { "refuse" };
        self.get(&format!("/natd-test/outage?secs={secs}&mode={mode}"));
    }

    /// Makes CloudWatch alone unavailable to natd for `secs` seconds (answered 503):
    /// EC2, Auto Scaling and IMDS answer as usual.
    pub fn cloudwatch_outage(&self, secs: f64) {
        self.get(&format!(
            "/natd-test/outage?secs={secs}&mode=refuse&service=monitoring"
        ));
    }

    fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("response");
        raw.split("\r\n\r\n").nth(1).expect("body").to_string()
    }

    /// Starts an IMDSv2 fixture answering for `instance_id`, on 127.0.0.1.
    pub fn imds(&self, instance_id: &str) -> Imds {
        self.imds_with(instance_id, None)
    }

    /// As [`Emulator::imds`]; with `local_ipv4s`, the interface's secondary addresses
    /// are those the file lists (the lab's data plane, which delivers a moved address
    /// some time after the API shows it), not the emulator's.
    pub fn imds_with(&self, instance_id: &str, local_ipv4s: Option<&std::path::Path>) -> Imds {
        let mut cmd = Command::new(crate::python());
        cmd.arg(crate::root().join("tests/emulator/imds.py"))
            .args([
                "--endpoint",
                &self.url(),
                "--region",
                REGION,
                "--instance-id",
                instance_id,
            ])
            .args(["-H", "127.0.0.1", "-p", "0"]);
        if let Some(f) = local_ipv4s {
            cmd.arg("--local-ipv4s-file").arg(f);
        }
        let (id, secret) = self.admin.lock().unwrap().clone();
        cmd.env("AWS_ACCESS_KEY_ID", id)
            .env("AWS_SECRET_ACCESS_KEY", secret);
        let (proc, port) = spawn_server(cmd, "imds fixture");
        Imds { _proc: proc, port }
    }
}

/// An IMDSv2 fixture for one instance.
#[derive(Debug)]
pub struct Imds {
    _proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

//! One TCP connection bound to an interface: the data plane's probes, the pair's check
//! through the holder (bound to the VXLAN link), the standby's check of its own path
//! (the witness) and of the link itself.

use std::net::SocketAddrV4;
use std::time::Duration;

/// Why a connection did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The far end answered with a reset: the path works, nothing listens there.
    Refused,
    /// No answer within the time allowed.
    Timeout(Duration),
    /// Anything else (unreachable, no route, the interface is gone), in the kernel's
    /// words.
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused => f.write_str("connection refused"),
            Self::Timeout(t) => write!(f, "no answer within {t:?}"),
            Self::Other(e) => f.write_str(e),
        }
    }
}

/// Opens (and closes) one TCP connection to `target`, leaving by `dev`.
pub async fn connect(target: SocketAddrV4, dev: &str, timeout: Duration) -> Result<(), Failure> {
    let attempt = async {
        let sock = tokio::net::TcpSocket::new_v4().map_err(|e| Failure::Other(e.to_string()))?;
        sock.bind_device(Some(dev.as_bytes()))
            .map_err(|e| Failure::Other(format!("bind to {dev}: {e}")))?;
        match sock.connect(target.into()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(Failure::Refused),
            Err(e) => Err(Failure::Other(e.to_string())),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| Failure::Timeout(timeout))?
}

/// Whether the far end of `dev` answers at all: a connection accepted or refused (a
/// reset comes back) proves the path both ways; silence or an error does not.
pub async fn answers(target: SocketAddrV4, dev: &str, timeout: Duration) -> bool {
    matches!(
        connect(target, dev, timeout).await,
        Ok(()) | Err(Failure::Refused)
    )
}

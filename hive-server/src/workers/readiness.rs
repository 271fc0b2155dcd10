//! Readiness checks: does a worker serve on its port yet?

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::catalog::Readiness;

/// Longest a single check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the readiness check once against `port` on loopback.
pub async fn check(readiness: &Readiness, port: u16) -> bool {
    tokio::time::timeout(CHECK_TIMEOUT, check_once(readiness, port))
        .await
        .unwrap_or(false)
}

async fn check_once(readiness: &Readiness, port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let path = match readiness {
        Readiness::Tcp => return true,
        Readiness::Http(path) => path,
    };

    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    // Only the status line matters: `HTTP/1.x 200 ...`.
    let mut head = [0u8; 16];
    let mut filled = 0;
    while filled < head.len() {
        match stream.read(&mut head[filled..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    let head = String::from_utf8_lossy(&head[..filled]);
    head.starts_with("HTTP/1.") && head.get(9..12) == Some("200")
}

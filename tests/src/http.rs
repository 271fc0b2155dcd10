//! A small HTTP/1.1 file server for download tests, on `127.0.0.1:0`, with faults to inject:
//! dropped connections, wrong lengths, missing `Content-Length`, slow bodies.
//!
//! It answers `GET` (with `Range: bytes=N-` as `206 Partial Content`) and records every request,
//! so tests can assert how many transfers happened and where they resumed.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// How the server serves one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Serve it normally.
    None,
    /// On the first request only, close the connection after this many body bytes.
    DropOnceAfter(usize),
    /// Send no `Content-Length`; the body ends when the connection closes.
    NoContentLength,
    /// Send the body in 1 KiB pieces with this delay between them.
    Slow(Duration),
    /// Claim this `Content-Length`, then close without a body.
    ClaimLength(u64),
}

#[derive(Debug, Clone)]
struct File {
    body: Arc<Vec<u8>>,
    fault: Fault,
    served: usize,
}

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Request path.
    pub path: String,
    /// Value of the `Range` header, if any.
    pub range: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<String, File>,
    requests: Vec<Recorded>,
}

/// The file server; stops accepting when dropped.
#[derive(Debug)]
pub struct FileServer {
    port: u16,
    state: Arc<Mutex<State>>,
    stopped: Arc<AtomicBool>,
}

impl FileServer {
    /// Starts a server with no files.
    pub fn start() -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind the file server");
        let port = listener.local_addr().expect("address").port();
        let state = Arc::new(Mutex::new(State::default()));
        let stopped = Arc::new(AtomicBool::new(false));
        {
            let state = Arc::clone(&state);
            let stopped = Arc::clone(&stopped);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = Arc::clone(&state);
                    std::thread::spawn(move || serve(stream, &state));
                }
            });
        }
        Self {
            port,
            state,
            stopped,
        }
    }

    /// Serves `body` at `path` (starting with `/`) with `fault`.
    pub fn add(&self, path: &str, body: Vec<u8>, fault: Fault) {
        self.state.lock().unwrap().files.insert(
            path.to_owned(),
            File {
                body: Arc::new(body),
                fault,
                served: 0,
            },
        );
    }

    /// URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Requests received so far for `path`.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        let state = self.state.lock().unwrap();
        state
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }

    let file = {
        let mut state = state.lock().unwrap();
        state.requests.push(Recorded {
            path: path.clone(),
            range: range.clone(),
        });
        state.files.get_mut(&path).map(|file| {
            file.served += 1;
            file.clone()
        })
    };
    let mut stream = stream;
    let Some(file) = file else {
        let _ = stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
        );
        return;
    };

    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n <= file.body.len());
    let body = &file.body[start.unwrap_or(0)..];
    let mut head = match start {
        Some(start) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\n",
            file.body.len().saturating_sub(1),
            file.body.len()
        ),
        None => "HTTP/1.1 200 OK\r\n".to_owned(),
    };
    match file.fault {
        Fault::NoContentLength => {}
        Fault::ClaimLength(length) => head.push_str(&format!("Content-Length: {length}\r\n")),
        _ => head.push_str(&format!("Content-Length: {}\r\n", body.len())),
    }
    head.push_str("Connection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }

    match file.fault {
        Fault::ClaimLength(_) => {}
        Fault::DropOnceAfter(bytes) if file.served == 1 => {
            let _ = stream.write_all(&body[..bytes.min(body.len())]);
            let _ = stream.flush();
        }
        Fault::Slow(delay) => {
            for piece in body.chunks(1024) {
                if stream.write_all(piece).is_err() {
                    return;
                }
                std::thread::sleep(delay);
            }
        }
        _ => {
            let _ = stream.write_all(body);
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

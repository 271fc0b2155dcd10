//! Listening TCP sockets, by socket inode, for telling which ports a worker listens on.
//!
//! In the hive's own network namespace the kernel is asked over `NETLINK_SOCK_DIAG` for
//! listening sockets only, as `ss -lt` does. Reading `/proc/net/tcp` instead makes the kernel walk
//! its whole connection hash table: about 1.5 ms per table on a machine with 700 connections in
//! TIME_WAIT (measured), even when only a few sockets listen. Processes in other network
//! namespaces are read from their own `/proc/PID/net/tcp` tables, which the hive cannot query
//! over its netlink socket.

use std::{collections::HashMap, io, path::PathBuf};

use procfs::process::Process;
use rustix::{
    fd::OwnedFd,
    net::{
        AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink, recv, sendto,
        socket_with,
    },
};

/// Socket inode to the port the socket listens on.
pub(super) type Listeners = HashMap<u64, u16>;

/// Listening sockets by network namespace, for one scan. Each namespace is read once, because
/// every process in it sees the same sockets.
#[derive(Default)]
pub(super) struct ListenTables {
    /// Keyed by the namespace's `net:[inode]` link text.
    by_namespace: HashMap<PathBuf, Listeners>,
    own_namespace: Option<PathBuf>,
}

impl ListenTables {
    /// Returns the listening sockets of the network namespace `process` is in.
    pub(super) fn listeners_of(&mut self, process: &Process) -> &Listeners {
        let namespace =
            std::fs::read_link(format!("/proc/{}/ns/net", process.pid)).unwrap_or_default();
        let own = self
            .own_namespace
            .get_or_insert_with(|| std::fs::read_link("/proc/self/ns/net").unwrap_or_default());
        let is_own = !namespace.as_os_str().is_empty() && namespace == *own;
        self.by_namespace.entry(namespace).or_insert_with(|| {
            if is_own {
                match own_namespace_listeners() {
                    Ok(listeners) => return listeners,
                    Err(error) => {
                        tracing::debug!(
                            %error,
                            "failed to query listening sockets over sock_diag, reading /proc/net/tcp instead"
                        );
                    }
                }
            }
            proc_listeners(process)
        })
    }
}

/// Reads the listening sockets of `process`'s network namespace from its `/proc` TCP tables.
fn proc_listeners(process: &Process) -> Listeners {
    [process.tcp(), process.tcp6()]
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.state == procfs::net::TcpState::Listen)
        .map(|entry| (entry.inode, entry.local_address.port()))
        .collect()
}

/// `SOCK_DIAG_BY_FAMILY`, the message type of socket queries and their replies (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR` and `NLMSG_DONE` (linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST | NLM_F_DUMP`.
const DUMP_REQUEST: u16 = 0x1 | 0x300;
/// `TCP_LISTEN` in the kernel's TCP state numbering.
const TCP_LISTEN: u32 = 10;
const IPPROTO_TCP: u8 = 6;
/// Sizes of `struct nlmsghdr`, `struct inet_diag_req_v2` and `struct inet_diag_msg`.
const HEADER_LEN: usize = 16;
const REQUEST_LEN: usize = 56;
const MESSAGE_LEN: usize = 72;

/// Asks the kernel for the listening TCP sockets, IPv4 and IPv6, of the hive's own network
/// namespace.
fn own_namespace_listeners() -> io::Result<Listeners> {
    let socket = socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    let mut listeners = Listeners::new();
    for (seq, family) in [AddressFamily::INET, AddressFamily::INET6]
        .into_iter()
        .enumerate()
    {
        query(&socket, seq as u32 + 1, family, &mut listeners)?;
    }
    Ok(listeners)
}

/// Sends one dump request for listening TCP sockets of `family` and collects the replies.
fn query(
    socket: &OwnedFd,
    seq: u32,
    family: AddressFamily,
    listeners: &mut Listeners,
) -> io::Result<()> {
    let mut request = [0u8; HEADER_LEN + REQUEST_LEN];
    request[0..4].copy_from_slice(&((HEADER_LEN + REQUEST_LEN) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request[6..8].copy_from_slice(&DUMP_REQUEST.to_ne_bytes());
    request[8..12].copy_from_slice(&seq.to_ne_bytes());
    // Port id 0 (bytes 12..16): the kernel assigns it.
    let body = &mut request[HEADER_LEN..];
    body[0] = family.as_raw() as u8;
    body[1] = IPPROTO_TCP;
    body[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    sendto(
        socket,
        &request,
        SendFlags::empty(),
        &netlink::SocketAddrNetlink::new(0, 0),
    )?;

    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        let (received, _) = recv(socket, &mut buffer[..], RecvFlags::empty())?;
        let mut rest = &buffer[..received];
        while rest.len() >= HEADER_LEN {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
            if len < HEADER_LEN || len > rest.len() {
                return Err(io::Error::other(
                    "malformed sock_diag reply: message length out of bounds",
                ));
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = rest
                        .get(HEADER_LEN..HEADER_LEN + 4)
                        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                        .unwrap_or(0);
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some((inode, port)) = listener(&rest[HEADER_LEN..len]) {
                        listeners.insert(inode, port);
                    }
                }
                _ => {}
            }
            // Messages are aligned to 4 bytes.
            let advance = (len + 3) & !3;
            rest = rest.get(advance..).unwrap_or_default();
        }
    }
}

/// Reads the inode and local port out of a `struct inet_diag_msg`.
fn listener(message: &[u8]) -> Option<(u64, u16)> {
    if message.len() < MESSAGE_LEN {
        return None;
    }
    // The socket id starts at byte 4 with the source port in network byte order.
    let port = u16::from_be_bytes(message[4..6].try_into().ok()?);
    let inode = u32::from_ne_bytes(message[68..72].try_into().ok()?);
    Some((u64::from(inode), port))
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        os::fd::{AsRawFd, RawFd},
    };

    use super::*;

    /// Returns the inode of the socket open as `fd`, from its `/proc/self/fd` link.
    fn inode_of(fd: RawFd) -> u64 {
        let link =
            std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("read the socket's fd link");
        let text = link.to_str().expect("utf-8 link");
        text.strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|inode| inode.parse().ok())
            .unwrap_or_else(|| panic!("not a socket link: {text}"))
    }

    #[test]
    fn netlink_matches_proc_tables() {
        let mut sockets = vec![TcpListener::bind("127.0.0.1:0").expect("bind v4")];
        sockets.extend(TcpListener::bind("[::1]:0").ok());
        let myself = Process::myself().expect("own process");

        let from_netlink = own_namespace_listeners().expect("sock_diag query");
        let from_proc = proc_listeners(&myself);
        for socket in &sockets {
            let inode = inode_of(socket.as_raw_fd());
            let port = socket.local_addr().expect("address").port();
            assert_eq!(from_netlink.get(&inode), Some(&port), "netlink, {socket:?}");
            assert_eq!(from_proc.get(&inode), Some(&port), "/proc, {socket:?}");
        }
    }

    #[test]
    fn connected_sockets_are_not_listeners() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let from_netlink = own_namespace_listeners().expect("sock_diag query");
        for fd in [client.as_raw_fd(), accepted.as_raw_fd()] {
            assert_eq!(from_netlink.get(&inode_of(fd)), None);
        }
        assert!(from_netlink.contains_key(&inode_of(listener.as_raw_fd())));
    }

    #[test]
    fn short_messages_are_skipped() {
        assert_eq!(listener(&[0; MESSAGE_LEN - 1]), None);
        let mut message = [0u8; MESSAGE_LEN];
        message[4..6].copy_from_slice(&8080u16.to_be_bytes());
        message[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        assert_eq!(listener(&message), Some((4242, 8080)));
    }
}

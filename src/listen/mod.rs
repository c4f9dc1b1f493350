//! Accepting connections, the same way on every listener (tunnel endpoint, destinations'
//! cloud ports, reverse and SOCKS5 listeners, the management API): until a stop signal, and
//! a failed accept (out of file descriptors, say) is logged and retried after a pause
//! instead of spinning. [`http`] serves HTTP/1 on such a listener (admin endpoint, API).

pub mod http;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The pause after a failed accept.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Binds one address as [`bind`] does, synchronously (for a caller that must report a port in
/// use at once); the listener is non-blocking, ready for [`TcpListener::from_std`].
pub fn bind_std(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    crate::relay::tune(&sock);
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG as i32)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// A Unix socket bound by [`bind_unix`].
#[derive(Debug)]
pub struct UnixBound {
    pub listener: UnixListener,
    /// This process's user: with root, the only one [`http::serve_unix`] serves.
    pub owner: u32,
    /// Keep it while serving: dropped, it removes the socket file.
    pub guard: UnixGuard,
}

/// Removes the socket file when dropped, if it is still the one bound here.
#[derive(Debug)]
pub struct UnixGuard {
    path: std::path::PathBuf,
    /// The socket file's device and inode (a removed file's inode may be reused; by a
    /// socket, hardly).
    ino: (u64, u64),
    /// `PATH.lock`, held exclusively while the socket is served: two processes starting at
    /// once can't both judge the same socket file stale and remove each other's. Dropped
    /// after the socket file is removed; the lock file itself stays, as removing it would
    /// race with a process about to lock it.
    _lock: std::fs::File,
}

impl Drop for UnixGuard {
    fn drop(&mut self) {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| (m.dev(), m.ino()) == self.ino && m.file_type().is_socket())
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds a Unix socket at `path` that only this process's user may connect to (mode 0600;
/// [`http::serve_unix`] also checks each caller's user). Its directory must belong to this
/// user or root and be writable by no one else, or another user could swap the path between
/// the bind and the chmod. A socket file left by a process that is gone is replaced; one that
/// a live process answers on is not, nor is any other file. `PATH.lock` beside it is locked
/// (`flock`) for as long as the socket is served, so of two processes that start at once
/// only one gets that far.
pub async fn bind_unix(path: &std::path::Path) -> std::io::Result<UnixBound> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let owner = tokio::net::UnixStream::pair()?.0.peer_cred()?.uid();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "the path names no file"))?;
    // Every directory on the way, symlinks resolved, must be ours or root's and writable by
    // no one else; above the socket's own directory a sticky one (/tmp) may be shared, as
    // others can't rename what is ours in it.
    let dir = std::fs::canonicalize(dir)?;
    for (i, d) in dir.ancestors().enumerate() {
        let m = std::fs::metadata(d)?;
        let shared = m.mode() & 0o022 != 0 && (i == 0 || m.mode() & 0o1000 == 0);
        if (m.uid() != owner && m.uid() != 0) || shared {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{} must belong to this user (uid {owner}) or root and be writable by no one else (it is uid {}, mode {:o})",
                    d.display(),
                    m.uid(),
                    m.mode() & 0o7777
                ),
            ));
        }
    }
    let path = &dir.join(name);
    let lock = lock_beside(path)?;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        match tokio::net::UnixStream::connect(path).await {
            // Nobody listens: a socket file left behind.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(Error::new(
                    ErrorKind::AddrInUse,
                    "a running process answers on it",
                ))
            }
            Err(e) => {
                return Err(Error::new(
                    e.kind(),
                    format!("a socket is in the way and it can't be told whether a process answers on it: {e}"),
                ))
            }
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let m = std::fs::symlink_metadata(path)?;
    if !m.file_type().is_socket() || m.uid() != owner {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            "the socket file changed under us",
        ));
    }
    Ok(UnixBound {
        listener,
        owner,
        guard: UnixGuard {
            path: path.clone(),
            ino: (m.dev(), m.ino()),
            _lock: lock,
        },
    })
}

/// Opens and locks `PATH.lock` (made 0600, never through a symlink), or says which process
/// state is in the way: another process holding it is `AddrInUse`.
fn lock_beside(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = std::path::PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&lock_path)
        .map_err(|e| Error::new(e.kind(), format!("{}: {e}", lock_path.display())))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(Error::new(
            ErrorKind::AddrInUse,
            format!(
                "another process holds {} (a second instance with the same admin_socket?)",
                lock_path.display()
            ),
        )),
        Err(e) => {
            let e = Error::from(e);
            Err(Error::new(
                e.kind(),
                format!("{}: {e}", lock_path.display()),
            ))
        }
    }
}

/// The next connection, or `None` once `stop` is cancelled.
pub async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => return Some(conn),
                Err(e) => {
                    let addr = listener.local_addr().ok();
                    warn!(listen.addr = ?addr, error = %e, "accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_RETRY) => {}
                        _ = stop.cancelled() => return None,
                    }
                }
            },
            _ = stop.cancelled() => return None,
        }
    }
}

/// Hands every connection to `on_conn` until `stop`.
pub async fn accept_until(
    listener: &TcpListener,
    stop: &CancellationToken,
    mut on_conn: impl FnMut(TcpStream, SocketAddr),
) {
    while let Some((tcp, peer)) = accept(listener, stop).await {
        on_conn(tcp, peer);
    }
}

/// Listen backlog: a burst of callers must queue, not overflow the SYN queue into syncookies
/// (which can resurrect closed connections from stray ACKs).
const BACKLOG: u32 = 4096;

/// Binds `addr` (a name is resolved; the first address that binds wins) with
/// `SO_REUSEADDR`, a deep backlog, and the options of relayed sockets, which the connections
/// it accepts inherit ([`crate::relay::tune`]). Set before `listen`, so no connection can
/// arrive without them. The tunnel endpoint and the management API take them too: keepalive
/// and `TCP_NODELAY` suit their connections as well.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        match bind_std(a).and_then(TcpListener::from_std) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("address resolved to nothing")))
}

/// Whose connections count together: an IPv4 address, or an IPv6 /64 (one host usually
/// holds a whole /64, so counting each address would give it 2^64 quotas).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Connections per source (see [`source_key`]), for a listener that caps them.
#[derive(Clone, Default)]
pub struct Sources(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection counted against its source address; released on drop.
pub struct SourceSlot {
    sources: Sources,
    ip: IpAddr,
}

impl Sources {
    /// Counts a connection from `ip` against its source, or `None` if the source holds
    /// `cap` already.
    pub fn take(&self, ip: IpAddr, cap: usize) -> Option<SourceSlot> {
        let ip = source_key(ip);
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A refusal leaves no entry: the map holds only sources with connections.
        if m.get(&ip).copied().unwrap_or(0) >= cap {
            return None;
        }
        *m.entry(ip).or_insert(0) += 1;
        Some(SourceSlot {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = self.sources.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another user who may write in the socket's directory could swap the path between the
    /// bind and the chmod: such a directory is refused, and a file in the way is kept.
    #[tokio::test]
    async fn a_unix_socket_wants_a_directory_no_one_else_writes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        for mode in [0o777, 0o1777, 0o770] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let e = bind_unix(&path).await.unwrap_err();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied,
                "{mode:o}: {e}"
            );
            assert!(e.to_string().contains("writable by no one else"), "{e}");
            assert!(!path.exists());
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(&path, "not a socket").unwrap();
        let e = bind_unix(&path).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
        std::fs::remove_file(&path).unwrap();
        let bound = bind_unix(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second process (here, a second bind) can't take it over while it is held.
        let e = bind_unix(&path).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        // Dropped, it removes its own socket file, and only its own.
        let again = {
            drop(bound);
            assert!(!path.exists());
            bind_unix(&path).await.unwrap()
        };
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        drop(again);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's");
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        let k = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"));
        assert_ne!(k("192.0.2.7"), k("192.0.2.8"));
    }

    /// Two processes starting at once both find a stale socket refusing connections: the
    /// lock beside it lets only one judge and replace it, so neither removes the other's.
    #[tokio::test]
    async fn a_stale_socket_is_replaced_only_by_the_process_holding_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        // A socket file nobody listens on (a process killed with -9 leaves one).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let other = lock_beside(&path).unwrap();
        let e = bind_unix(&path).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        assert!(e.to_string().contains("admin.sock.lock"), "{e}");
        assert!(path.exists(), "the other process's socket is left alone");
        drop(other);
        let bound = bind_unix(&path).await.unwrap();
        tokio::net::UnixStream::connect(&path).await.unwrap();
        drop(bound);
        assert!(!path.exists());
        assert!(
            dir.path().join("admin.sock.lock").exists(),
            "the lock file stays"
        );
    }

    /// The relay's socket options are set once, on the listener: every accepted connection
    /// must carry them without a call of its own.
    #[tokio::test]
    async fn accepted_connections_inherit_the_relays_socket_options() {
        let sync = bind_std("127.0.0.1:0".parse().unwrap()).unwrap();
        for l in [
            bind("127.0.0.1:0").await.unwrap(),
            TcpListener::from_std(sync).unwrap(),
        ] {
            let addr = l.local_addr().unwrap();
            let _c = TcpStream::connect(addr).await.unwrap();
            let (a, _) = l.accept().await.unwrap();
            has_the_relays_options(&a);
        }
    }

    fn has_the_relays_options(a: &TcpStream) {
        let a = socket2::SockRef::from(a);
        assert!(a.tcp_nodelay().unwrap(), "TCP_NODELAY");
        assert!(a.keepalive().unwrap(), "SO_KEEPALIVE");
        assert_eq!(
            a.tcp_keepalive_time().unwrap(),
            crate::relay::KEEPALIVE_IDLE
        );
        assert_eq!(
            a.tcp_keepalive_interval().unwrap(),
            crate::relay::KEEPALIVE_INTERVAL
        );
    }
}

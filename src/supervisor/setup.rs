//! What a supervisor prepares around its servers: certificates, free ports, log files.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};

use super::SupervisorError;

/// Writes a fresh CA, server and client certificates into `dir` with `BINARY certs --dir DIR`.
pub fn make_certs(binary: &Path, dir: &Path) -> anyhow::Result<()> {
    let output = Command::new(binary)
        .args(["certs", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SupervisorError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
    anyhow::ensure!(
        output.status.success(),
        "`quickv certs` failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// `N` loopback UDP addresses that were free a moment ago (held together, so they differ).
pub fn free_udp_addrs<const N: usize>() -> std::io::Result<[SocketAddr; N]> {
    free_addrs(|| {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        Ok((socket.local_addr()?, socket))
    })
}

/// `N` loopback TCP addresses that were free a moment ago (for gateways).
pub fn free_tcp_addrs<const N: usize>() -> std::io::Result<[SocketAddr; N]> {
    free_addrs(|| {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        Ok((listener.local_addr()?, listener))
    })
}

/// `N` addresses from `bind`, each socket held until all are bound so that they differ.
fn free_addrs<const N: usize, S>(
    bind: impl Fn() -> std::io::Result<(SocketAddr, S)>,
) -> std::io::Result<[SocketAddr; N]> {
    let bound = (0..N)
        .map(|_| bind())
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut addrs = [SocketAddr::from(([127, 0, 0, 1], 0)); N];
    for (addr, (bound_addr, _socket)) in addrs.iter_mut().zip(&bound) {
        *addr = *bound_addr;
    }
    Ok(addrs)
}

/// Opens `path` for appending (creating it).
pub fn append(path: &Path) -> Result<File, SupervisorError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| SupervisorError::Log {
            path: path.to_path_buf(),
            source,
        })
}

/// The last `lines` lines of a log file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(file) = File::open(path) else {
        return format!("({} is not readable)", path.display());
    };
    let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

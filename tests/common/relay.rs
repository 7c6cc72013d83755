//! A UDP relay standing in for the network between the primary and the backup, so a test can
//! hold or cut the peer link at a chosen moment: real processes and real QUIC on both ends, the
//! relay only moves (or withholds) datagrams, like a cable that can be unplugged.
//!
//! The primary dials [`Relay::front`] (its `--peer`); the relay forwards to the backup from
//! [`Relay::back`], which the backup is told is its peer (`--peer`), so the backup's reserved
//! peer slots still apply. Each direction can pass, hold (queue until [`Relay::pass`]) or drop.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What the relay does with datagrams going one way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Forward at once.
    Pass,
    /// Queue; [`Relay::pass`] sends the queue in order.
    Hold,
    /// Discard.
    Drop,
}

/// The relay's settings and the datagrams it holds.
#[derive(Debug)]
struct Valve {
    /// Primary → backup.
    to_backup: Flow,
    /// Backup → primary (acks, answers to the hello, keep-alives).
    to_primary: Flow,
    /// Held datagrams going to the backup.
    held_to_backup: Vec<Vec<u8>>,
    /// Held datagrams going to the primary.
    held_to_primary: Vec<Vec<u8>>,
    /// The primary's address, learned from its first datagram.
    primary: Option<SocketAddr>,
}

/// One relayed peer link; dropping it stops the relay (the link then looks cut).
pub struct Relay {
    /// Where the primary sends (give it as the primary's `--peer`).
    pub front: SocketAddr,
    /// Where the backup sees the primary's datagrams come from (the backup's `--peer`).
    pub back: SocketAddr,
    front_socket: Arc<UdpSocket>,
    back_socket: Arc<UdpSocket>,
    valve: Arc<Mutex<Valve>>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Binds both sockets on loopback, then asks `backup` for the backup's address (so the
    /// servers' free ports are chosen while the relay's are taken, and cannot collide with them)
    /// and starts relaying to it, both ways passing.
    pub async fn start(backup: impl FnOnce() -> SocketAddr) -> Relay {
        let front_socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind front"));
        let back_socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind back"));
        back_socket
            .connect(backup())
            .await
            .expect("connect to backup");
        let valve = Arc::new(Mutex::new(Valve {
            to_backup: Flow::Pass,
            to_primary: Flow::Pass,
            held_to_backup: Vec::new(),
            held_to_primary: Vec::new(),
            primary: None,
        }));
        let task = tokio::spawn(relay(
            front_socket.clone(),
            back_socket.clone(),
            valve.clone(),
        ));
        Relay {
            front: front_socket.local_addr().expect("front addr"),
            back: back_socket.local_addr().expect("back addr"),
            front_socket,
            back_socket,
            valve,
            task,
        }
    }

    /// Sets what happens to each direction from now on (held datagrams stay held).
    pub fn set(&self, to_backup: Flow, to_primary: Flow) {
        let mut v = lock(&self.valve);
        v.to_backup = to_backup;
        v.to_primary = to_primary;
    }

    /// Cuts the link both ways and forgets anything held: as if the cable were unplugged.
    pub fn cut(&self) {
        let mut v = lock(&self.valve);
        v.to_backup = Flow::Drop;
        v.to_primary = Flow::Drop;
        v.held_to_backup.clear();
        v.held_to_primary.clear();
    }

    /// Both ways pass again; whatever was held is delivered first, in order.
    pub async fn pass(&self) {
        let (to_backup, to_primary, primary) = {
            let mut v = lock(&self.valve);
            v.to_backup = Flow::Pass;
            v.to_primary = Flow::Pass;
            (
                std::mem::take(&mut v.held_to_backup),
                std::mem::take(&mut v.held_to_primary),
                v.primary,
            )
        };
        for d in to_backup {
            let _ = self.back_socket.send(&d).await;
        }
        if let Some(primary) = primary {
            for d in to_primary {
                let _ = self.front_socket.send_to(&d, primary).await;
            }
        }
    }

    /// Datagrams held for the primary so far: a test can wait until the backup has answered.
    pub fn held_to_primary(&self) -> usize {
        lock(&self.valve).held_to_primary.len()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<Valve>) -> std::sync::MutexGuard<'_, Valve> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Moves datagrams both ways until aborted. The valve is consulted per datagram, under a lock
/// held only to decide (never across a send), so [`Relay::pass`] sees a consistent queue.
async fn relay(front: Arc<UdpSocket>, back: Arc<UdpSocket>, valve: Arc<Mutex<Valve>>) {
    let mut from_primary = vec![0u8; 65_536];
    let mut from_backup = vec![0u8; 65_536];
    loop {
        tokio::select! {
            got = front.recv_from(&mut from_primary) => {
                let Ok((n, src)) = got else { continue };
                let datagram = from_primary[..n].to_vec();
                let send = {
                    let mut v = lock(&valve);
                    v.primary = Some(src);
                    match v.to_backup {
                        Flow::Pass => true,
                        Flow::Hold => {
                            v.held_to_backup.push(datagram.clone());
                            false
                        }
                        Flow::Drop => false,
                    }
                };
                if send {
                    let _ = back.send(&datagram).await;
                }
            }
            got = back.recv(&mut from_backup) => {
                let Ok(n) = got else { continue };
                let datagram = from_backup[..n].to_vec();
                let to = {
                    let mut v = lock(&valve);
                    match v.to_primary {
                        Flow::Pass => v.primary,
                        Flow::Hold => {
                            v.held_to_primary.push(datagram.clone());
                            None
                        }
                        Flow::Drop => None,
                    }
                };
                if let Some(primary) = to {
                    let _ = front.send_to(&datagram, primary).await;
                }
            }
        }
    }
}

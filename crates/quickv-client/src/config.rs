//! [`ClientConfig`], its builder, and the read modes of a pair client.

use std::path::PathBuf;
use std::time::Duration;

use quickv_proto::Limits;

/// Default number of long-lived streams per client connection.
pub const DEFAULT_STREAMS: usize = 4;
/// Default time allowed for the QUIC/TLS handshake plus the hello, in milliseconds.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default idle timeout, in milliseconds: a server silent this long (dead, partitioned) fails the
/// calls in flight (writes as indeterminate). Keep-alives go out at a third of it.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 5_000;
/// Default deadline of one call (or one batch), in milliseconds; see [`ClientConfig::timeout`].
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default first wait between two failed dials of the same server, in milliseconds.
pub const DEFAULT_BACKOFF_MIN_MS: u64 = 50;
/// Default longest wait between two failed dials of the same server, in milliseconds.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 2_000;

/// Where a pair client ([`Client::connect_pair`](crate::Client::connect_pair)) may send reads.
///
/// Writes always go to the primary, and so do [`Client::get`](crate::Client::get) and the batch
/// reads: those are linearizable. Only [`Client::read`](crate::Client::read) looks at this
/// setting, and its answer says which server gave it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadFrom {
    /// Only the primary answers; a primary that cannot be reached is an error (the default).
    #[default]
    Primary,
    /// When the primary cannot be reached (no connection, no dial succeeded), read from the backup
    /// instead — provided the backup reports its store current. Linearizable with servers of
    /// peer protocol 4, whose commit point is the backup (see [`ReadFrom::Any`]).
    BackupIfPrimaryDown,
    /// Spread reads over both servers: each [`Client::read`](crate::Client::read) goes to the
    /// primary and the backup in turn, and to the other server when the first refuses
    /// (`unavailable`: a backup that is not current or not linked, a primary not yet synced) or
    /// cannot be reached. Linearizable: a write takes effect when the backup applies it (chain
    /// replication's tail), the backup answers only while its store is current, and the primary
    /// answers a read of a key with a write in flight only after that write's ack — so reads at
    /// either server fit one history. (Servers before peer protocol 4 did not keep the last
    /// rule, and a read at the backup could run ahead of a later one at the primary:
    /// docs/client.md, "Read modes".)
    Any,
}

/// Which server gave an answer; see [`Read`](crate::Read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The primary (or the only server of a single-server client).
    Primary,
    /// The backup: with [`ReadFrom::BackupIfPrimaryDown`] because the primary could not be
    /// reached, with [`ReadFrom::Any`] by turn or because the primary refused.
    Backup,
}

/// How to reach and authenticate to a server, and how calls behave.
///
/// Build it with [`ClientConfig::new`] (defaults) and change fields, or with the
/// [`ClientConfig::builder`]:
///
/// ```
/// use std::time::Duration;
/// use quickv_client::{ClientConfig, ReadFrom};
///
/// let cfg = ClientConfig::builder("certs")
///     .timeout(Duration::from_secs(2))
///     .read_from(ReadFrom::BackupIfPrimaryDown)
///     .streams(8)
///     .build();
/// assert_eq!(cfg.timeout, Some(Duration::from_secs(2)));
/// assert_eq!(cfg.streams, 8);
/// assert_eq!(ClientConfig::new("certs").timeout, Some(Duration::from_secs(10)));
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Directory with `ca.pem`, `client.pem` and `client.key`.
    pub certs_dir: PathBuf,
    /// Long-lived streams to open; requests are spread over them.
    pub streams: usize,
    /// Time allowed to connect and exchange the hello.
    pub connect_timeout: Duration,
    /// Connection idle timeout (keep-alives are sent at a third of it).
    pub idle_timeout: Duration,
    /// Size limits applied to answers.
    pub limits: Limits,
    /// Deadline of each call, counted from the call (including any reconnection); `None` waits
    /// as long as the connection lives. A read past its deadline fails with
    /// [`ClientError::Timeout`](crate::ClientError::Timeout); a write past its deadline is
    /// [`ClientError::Indeterminate`](crate::ClientError::Indeterminate), since it may have been
    /// applied. Override per call with [`Client::with_timeout`](crate::Client::with_timeout).
    pub timeout: Option<Duration>,
    /// Where [`Client::read`](crate::Client::read) may go (pair clients only).
    pub read_from: ReadFrom,
    /// First wait after a failed dial before the same server is dialled again; doubles per
    /// failure up to `backoff_max`, each wait drawn between half and all of it (jitter). Calls
    /// made during the wait fail at once with the last dial's error.
    pub backoff_min: Duration,
    /// Longest wait between two dials of the same server.
    pub backoff_max: Duration,
    /// Retry writes whose fate is unknown until the pair answers, within the call's deadline
    /// (default on). Every write carries this client's session id and a sequence number; a retry
    /// resends the same pair, and the server answers a write it already applied with the
    /// original answer instead of applying it again. A write then ends `Indeterminate` only if
    /// its deadline passes before any attempt gets a definite answer. See `docs/client.md`.
    pub retry_writes: bool,
}

impl ClientConfig {
    /// Defaults with certificates from `certs_dir`.
    pub fn new(certs_dir: impl Into<PathBuf>) -> ClientConfig {
        ClientConfig {
            certs_dir: certs_dir.into(),
            streams: DEFAULT_STREAMS,
            connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            limits: Limits::default(),
            timeout: Some(Duration::from_millis(DEFAULT_TIMEOUT_MS)),
            read_from: ReadFrom::Primary,
            backoff_min: Duration::from_millis(DEFAULT_BACKOFF_MIN_MS),
            backoff_max: Duration::from_millis(DEFAULT_BACKOFF_MAX_MS),
            retry_writes: true,
        }
    }

    /// A builder starting from the defaults of [`ClientConfig::new`].
    pub fn builder(certs_dir: impl Into<PathBuf>) -> ClientConfigBuilder {
        ClientConfigBuilder {
            config: ClientConfig::new(certs_dir),
        }
    }
}

/// Builds a [`ClientConfig`]; see [`ClientConfig::builder`]. Every method sets the field of the
/// same name.
#[derive(Clone, Debug)]
#[must_use]
pub struct ClientConfigBuilder {
    config: ClientConfig,
}

impl ClientConfigBuilder {
    /// Long-lived streams per connection (at least 1 is used).
    pub fn streams(mut self, streams: usize) -> Self {
        self.config.streams = streams;
        self
    }

    /// Time allowed to connect and exchange the hello.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Connection idle timeout: how soon a silent (dead) server is noticed.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Default deadline of each call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// No default deadline: calls wait as long as the connection lives.
    pub fn no_timeout(mut self) -> Self {
        self.config.timeout = None;
        self
    }

    /// Size limits applied to answers.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Where [`Client::read`](crate::Client::read) may go.
    pub fn read_from(mut self, read_from: ReadFrom) -> Self {
        self.config.read_from = read_from;
        self
    }

    /// Bounds of the reconnection backoff (`min` is raised to at least 1 ms, `max` to `min`).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        self.config.backoff_min = min;
        self.config.backoff_max = max.max(min);
        self
    }

    /// Whether writes of unknown fate are retried (with their session stamp) until the pair
    /// answers or the deadline passes; see [`ClientConfig::retry_writes`].
    pub fn retry_writes(mut self, retry: bool) -> Self {
        self.config.retry_writes = retry;
        self
    }

    /// The finished configuration.
    pub fn build(self) -> ClientConfig {
        self.config
    }
}

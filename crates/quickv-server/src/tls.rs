//! Certificates and TLS: generation with rcgen, and the rustls/quinn configs of both links. The
//! half both sides share (certificate file names, PEM loading, client configs, refusal sentences)
//! is `quickv_net::tls`, so that applications get it without the server; it has that one name
//! everywhere (this module does not re-export it).
//!
//! One private CA signs everything. Files written by [`generate`] into the certificate directory:
//!
//! | file | what | used by |
//! |---|---|---|
//! | `ca.pem` / `ca.key` | the cluster CA (key kept to sign more certificates later) | everyone trusts `ca.pem` |
//! | `server.pem` / `server.key` | the server/peer certificate, SANs `localhost`, `127.0.0.1`, `::1` + `--san` | both servers of a pair, as server *and* as peer client |
//! | `client.pem` / `client.key` | a client certificate, role `admin` | CLI, client library, tester, bench |
//!
//! [`crate::pki`] adds named client certificates with roles, `crl.pem` and renewal.
//!
//! # Layout (imports point down only)
//!
//! - [`role`]: the role vocabulary ([`role::Access`], the subject unit) that generation and
//!   [`crate::pki`] share;
//! - `generate`: rcgen — the CA, server and client certificates, atomic file writes;
//! - [`crate::pki`] (above generation): identities an operator manages afterwards;
//! - `crl` and `verifier`: `crl.pem` loaded so that it fails closed, and the [`Trust`] every
//!   handshake reads at verification;
//! - `config` and `peer`: the rustls/quinn configs of the endpoint, the HTTPS gateway and the
//!   peer link.
//!
//! Mutual TLS is mandatory: a server demands a client certificate chaining to `ca.pem` and not
//! listed in `crl.pem` ([`client_verifier`]). On the peer link ([`quickv_proto::PEER_ALPN`]) both sides also
//! demand that the other's certificate *is* the pair's server certificate, so a client certificate
//! cannot pose as the peer (the backup checks in `server::peer_allowed`, the dialing primary in
//! the verifier of [`client_config`] with [`quickv_net::tls::Identity::Peer`]). Only TLS 1.3 and only the ring provider are used, passed
//! explicitly (with two providers compiled in, rustls cannot pick one on its own).
//!
//! With TLS 1.3 a client whose certificate is refused still sees `connect()` succeed; the refusal comes
//! as an alert on first use. [`quickv_net::tls::explain_connection_error`] turns those alerts into plain sentences.

mod config;
mod crl;
mod generate;
mod peer;
pub mod role;
mod verifier;

pub use config::{
    client_config, client_verifier, http_server_config, own_server_cert, peer_certificates,
    server_config, server_config_with, TransportLimits,
};
pub use crl::Revocation;
pub(crate) use generate::{cert_err, read_text, sign_leaf, write_file, Leaf};
pub use generate::{
    ensure, generate, issue_client_cert, Generated, BACKDATE_DAYS, CA_VALIDITY_DAYS,
    LEAF_VALIDITY_DAYS,
};
pub use verifier::{Current, Trust};

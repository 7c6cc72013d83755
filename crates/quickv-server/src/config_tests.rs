//! Unit tests of the typed config: defaults, the file format, validation.

use super::*;

#[test]
fn plain_http_off_loopback_needs_tls_or_an_explicit_opt_in() {
    let mut c = ServerConfig::new(Role::Standalone, "127.0.0.1:4470".parse().expect("addr"));
    c.http = Some("127.0.0.1:8080".parse().expect("addr"));
    assert!(c.validate().is_ok());
    c.http = Some("[::1]:8080".parse().expect("addr"));
    assert!(c.validate().is_ok());
    c.http = Some("10.1.2.3:8080".parse().expect("addr"));
    let err = c
        .validate()
        .expect_err("plain http off loopback")
        .to_string();
    assert!(
        err.contains("--http-tls") && err.contains("--http-insecure"),
        "{err}"
    );
    c.http_tls = true;
    assert!(c.validate().is_ok());
    c.http_insecure = true;
    assert!(c.validate().is_err(), "both flags contradict each other");
    c.http_tls = false;
    assert!(c.validate().is_ok());
}
#[test]
fn file_config_names_both_servers() {
    let file: FileConfig = toml::from_str(
        "certs = \"/etc/quickv\"\n[primary]\nlisten = \"10.0.0.1:4470\"\n[backup]\nlisten = \"10.0.0.2:4471\"\n[limits]\nexpected_keys = 5000\n[timeouts]\nack_ms = 300\n",
    )
    .expect("valid toml");
    let b = file.server_config(Role::Backup).expect("backup config");
    assert_eq!(b.expected_keys, 5000);
    assert_eq!(b.listen.to_string(), "10.0.0.2:4471");
    assert_eq!(
        b.peer.map(|p| p.to_string()).as_deref(),
        Some("10.0.0.1:4470")
    );
    assert_eq!(b.certs_dir, PathBuf::from("/etc/quickv"));
    assert_eq!(b.ack_timeout, Duration::from_millis(300));
    assert_eq!(b.http, None, "the gateway is off unless configured");
    assert_eq!(
        b.tls,
        TlsPolicy::default(),
        "every identity rule strict by default"
    );
    b.validate().expect("valid");
    let relaxed: FileConfig = toml::from_str(
        "[primary]\nlisten = \"10.0.0.1:4470\"\n[tls]\ntls12 = true\nallow_roleless = true\n",
    )
    .expect("valid toml");
    let s = relaxed.server_config(Role::Standalone).expect("config");
    assert!(s.tls.tls12 && s.tls.allow_roleless && !s.tls.allow_crl_removal);
    assert!(toml::from_str::<FileConfig>("[tls]\nallow_everything = true\n").is_err());
}

#[test]
fn each_server_takes_its_own_http_address() {
    let file: FileConfig = toml::from_str(
        "[primary]\nlisten = \"10.0.0.1:4470\"\nhttp = \"127.0.0.1:8080\"\nhttp_tls = true\n[backup]\nlisten = \"10.0.0.2:4471\"\nhttp = \"127.0.0.1:8081\"\n",
    )
    .expect("valid toml");
    let p = file.server_config(Role::Primary).expect("primary config");
    assert_eq!(
        p.http.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:8080")
    );
    assert!(p.http_tls);
    let b = file.server_config(Role::Backup).expect("backup config");
    assert_eq!(
        b.http.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:8081")
    );
    assert!(!b.http_tls);
    assert!(toml::from_str::<FileConfig>(
        "[primary]\nlisten = \"10.0.0.1:1\"\nhttp = \"nonsense\"\n"
    )
    .is_err());
}

#[test]
fn unknown_keys_and_missing_peer_are_errors() {
    assert!(toml::from_str::<FileConfig>("colour = 1").is_err());
    let cfg = ServerConfig::new(Role::Primary, "127.0.0.1:1".parse().expect("addr"));
    let err = cfg.validate().expect_err("primary without peer");
    assert!(err.to_string().contains("--peer"), "{err}");
    assert!("leader".parse::<Role>().is_err());
}

#[test]
fn peer_streams_must_fit_the_stream_limit() {
    let mut cfg = ServerConfig::new(Role::Primary, "127.0.0.1:1".parse().expect("addr"));
    cfg.peer = Some("127.0.0.1:2".parse().expect("addr"));
    cfg.validate().expect("defaults are valid");
    cfg.peer_streams = 0;
    assert!(cfg.validate().is_err());
    cfg.peer_streams = 33;
    assert!(cfg.validate().is_err());
    cfg.peer_streams = 8;
    cfg.max_streams = 8;
    let err = cfg.validate().expect_err("8 data streams + control > 8");
    assert!(
        err.to_string().contains("max-streams of at least 9"),
        "{err}"
    );
    cfg.max_streams = 9;
    cfg.validate().expect("fits");
}

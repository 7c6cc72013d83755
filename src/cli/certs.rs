//! `quickv certs client|revoke|renew`: the identity chores an operator runs where `ca.key` is.

use std::path::Path;

use super::args::CertsAction;
use quickv_server::pki;

/// Runs one `quickv certs` action in the certificate directory `dir`.
pub(crate) fn action(dir: &Path, action: CertsAction, force: bool) -> anyhow::Result<()> {
    let paths = quickv_net::tls::CertPaths::new(dir);
    match action {
        CertsAction::Client { name, role } => {
            let access: pki::Access = role.parse()?;
            let issued = pki::issue_client(&paths, &name, access, force)?;
            say!("wrote {} (role {access})", issued.cert.display());
            say!("wrote {}", issued.key.display());
            if let Some(r) = issued.revoked {
                say_revoked("the replaced certificate of", &name, &r);
            }
        }
        CertsAction::Revoke { name, cert, serial } => {
            let (what, r) = match (name, cert, serial) {
                (Some(name), _, _) => (name.clone(), pki::revoke(&paths, &name)?),
                (_, Some(file), _) => (
                    file.display().to_string(),
                    pki::revoke_cert_file(&paths, &file)?,
                ),
                (_, _, Some(hex)) => (
                    format!("serial {hex}"),
                    pki::revoke_serial(&paths, &pki::parse_serial(&hex)?)?,
                ),
                (None, None, None) => anyhow::bail!("give NAME, --cert FILE or --serial HEX"),
            };
            say_revoked("", &what, &r);
        }
        CertsAction::Renew => {
            let (names, r) = pki::renew_server(&paths)?;
            say!(
                "renewed {} for {}",
                paths.server_cert().display(),
                names.join(", ")
            );
            say_revoked("the replaced", "server.pem", &r);
            say!("copy server.pem, server.key and crl.pem to both servers (they reload on their own within 2 s, or send each SIGHUP)");
            return Ok(());
        }
    }
    say!("copy crl.pem to every server host; servers reload it within 2 s (or send each SIGHUP)");
    Ok(())
}

fn say_revoked(prefix: &str, what: &str, r: &pki::Revoked) {
    let verb = if r.newly {
        "revoked"
    } else {
        "already revoked"
    };
    let prefix = match prefix {
        "" => String::new(),
        p => format!("{p} "),
    };
    say!(
        "{verb} {prefix}{what} (serial {}); {} now lists {} certificate(s)",
        r.serial,
        r.crl.display(),
        r.entries
    );
}

//! Test certificates made with the `openssl` command: a self-signed CA and leaf certificates
//! (server or client) it signs, all P-256 keys in PKCS#8 PEM, valid for two days. Used by the
//! MQTT (`mqtts://`) and AMQP (`amqps://`) TLS tests.

use std::path::Path;
use std::process::Command;

/// Runs `openssl ARGS` in `dir`; panics with its output on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run openssl (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA `NAME.pem` / `NAME.key` (P-256, PKCS#8) in `dir`.
pub fn make_ca(dir: &Path, name: &str) {
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "basicConstraints = critical, CA:TRUE\n\
         keyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )
    .expect("write the CA extensions");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{name}.key"),
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN=mqdb test {name}"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-signkey",
            &format!("{name}.key"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A leaf `NAME.pem` / `NAME.key` (P-256, PKCS#8) for `cn`, signed by `ca`, with the given
/// X.509 v3 `extensions` (subjectAltName, extendedKeyUsage …).
pub fn make_leaf(dir: &Path, ca: &str, name: &str, cn: &str, extensions: &str, serial: u32) {
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!(
            "basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             {extensions}\n"
        ),
    )
    .expect("write the leaf extensions");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{name}.key"),
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            &serial.to_string(),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// The usual set in `dir`: a CA `ca`, a `server` leaf for localhost and 127.0.0.1, and a
/// `client` leaf (CN mqdb-client), both signed by `ca`.
#[allow(dead_code)]
pub fn make_pki(dir: &Path) {
    make_ca(dir, "ca");
    make_leaf(
        dir,
        "ca",
        "server",
        "localhost",
        "subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth",
        1001,
    );
    make_leaf(
        dir,
        "ca",
        "client",
        "mqdb-client",
        "extendedKeyUsage = clientAuth",
        1002,
    );
}

//! Test certificates made with the `openssl` command: P-256 keys in PKCS#8 PEM, certificates
//! valid for two days.

use std::path::Path;
use std::process::Command;

use super::Ran;

/// Runs `openssl ARGS` in `dir`; panics with its output on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    Ran::of(Command::new("openssl").args(args).current_dir(dir)).code(0);
}

/// `NAME.key`, and `NAME.pem` for subject CN `cn` with the extensions `ext`, signed as the
/// `x509 -req` options `sign` say.
fn key_and_cert(dir: &Path, name: &str, cn: &str, ext: &str, sign: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write the extensions");
    // File names have no spaces; the subject may, so it goes last as one argument.
    let run = |args: String, last: &[&str]| {
        let all: Vec<&str> = args
            .split_whitespace()
            .chain(last.iter().copied())
            .collect();
        openssl(dir, &all);
    };
    let genpkey = "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256";
    run(format!("{genpkey} -out {name}.key"), &[]);
    let subject = format!("/CN={cn}");
    run(
        format!("req -new -key {name}.key -out {name}.csr -subj"),
        &[&subject],
    );
    let x509 = format!("x509 -req -in {name}.csr -days 2 -extfile {name}.ext -out {name}.pem");
    run(format!("{x509} {sign}"), &[]);
}

/// A self-signed CA `NAME.pem` / `NAME.key` in `dir`.
pub fn make_ca(dir: &Path, name: &str) {
    let ext = "basicConstraints = critical, CA:TRUE\n\
               keyUsage = critical, keyCertSign, cRLSign\n\
               subjectKeyIdentifier = hash\n";
    let sign = format!("-signkey {name}.key");
    key_and_cert(dir, name, &format!("mqdb test {name}"), ext, &sign);
}

/// A leaf `NAME.pem` / `NAME.key` for `cn`, signed by `ca`, with the given X.509 v3
/// `extensions` (subjectAltName, extendedKeyUsage …).
pub fn make_leaf(dir: &Path, ca: &str, name: &str, cn: &str, extensions: &str, serial: u32) {
    let ext = format!(
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\n\
         {extensions}\n"
    );
    let sign = format!("-CA {ca}.pem -CAkey {ca}.key -set_serial {serial}");
    key_and_cert(dir, name, cn, &ext, &sign);
}

/// The usual set in `dir`: a CA `ca`, a `server` leaf for localhost and 127.0.0.1, and a
/// `client` leaf (CN mqdb-client), both signed by `ca`.
pub fn make_pki(dir: &Path) {
    make_ca(dir, "ca");
    let server = "subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth";
    make_leaf(dir, "ca", "server", "localhost", server, 1001);
    let client = "extendedKeyUsage = clientAuth";
    make_leaf(dir, "ca", "client", "mqdb-client", client, 1002);
}

/// A temp dir with [`make_pki`]'s set and an unrelated CA `other_ca`.
pub fn pki_with_other_ca() -> tempfile::TempDir {
    let dir = super::temp_dir("pki");
    make_pki(dir.path());
    make_ca(dir.path(), "other_ca");
    dir
}

//! TLS fixtures made at run time with the `openssl` CLI, in a temp dir: a test CA, server and
//! client certificates it signs (valid, expired, for another name), and certificates of a CA
//! nobody trusts. No network, nothing checked in.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::TempPrefix;

/// The CA config: `req` for the CA itself, `ca` for certificates with chosen dates.
const CA_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = ngx-hc test CA
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ca]
default_ca = testca
[testca]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
unique_subject = no
[any]
commonName = supplied
";

/// A certificate and its key.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A directory with a test CA (`ca.pem`), another CA nobody trusts, and whatever certificates
/// a test asks for.
pub struct Pki {
    dir: TempPrefix,
}

fn run_openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A fresh directory with both CAs.
    pub fn new() -> Pki {
        let pki = Pki {
            dir: TempPrefix::new(),
        };
        let d = pki.dir();
        fs::write(d.join("ca.cnf"), CA_CNF).expect("write ca.cnf");
        fs::write(d.join("index.txt"), "").expect("write index.txt");
        fs::write(d.join("serial"), "1000\n").expect("write serial");
        for ca in ["ca", "other-ca"] {
            run_openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-config",
                    "ca.cnf",
                    "-extensions",
                    "v3_ca",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                    "-days",
                    "3650",
                ],
            );
        }
        pki
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The trusted CA's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir().join("ca.pem")
    }

    /// A key and a certificate request for `dns`, and the extensions of its certificate.
    fn request(&self, file: &str, dns: &str) {
        let d = self.dir();
        fs::write(
            d.join(format!("{file}.ext")),
            format!(
                "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n\
                 extendedKeyUsage = serverAuth,clientAuth\nsubjectAltName = DNS:{dns}\n"
            ),
        )
        .expect("write ext");
        run_openssl(
            d,
            &[
                "req",
                "-new",
                "-config",
                "ca.cnf",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{file}.key"),
                "-out",
                &format!("{file}.csr"),
                "-subj",
                &format!("/CN={dns}"),
            ],
        );
    }

    fn pair(&self, file: &str) -> CertPair {
        CertPair {
            cert: self.dir().join(format!("{file}.pem")),
            key: self.dir().join(format!("{file}.key")),
        }
    }

    /// A certificate for `dns` signed by the trusted CA, valid for a year from now.
    pub fn leaf(&self, file: &str, dns: &str) -> CertPair {
        self.signed(file, dns, "ca")
    }

    /// A certificate for `dns` signed by a CA nobody trusts.
    pub fn untrusted_leaf(&self, file: &str, dns: &str) -> CertPair {
        self.signed(file, dns, "other-ca")
    }

    fn signed(&self, file: &str, dns: &str, ca: &str) -> CertPair {
        self.request(file, dns);
        run_openssl(
            self.dir(),
            &[
                "x509",
                "-req",
                "-in",
                &format!("{file}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "365",
                "-extfile",
                &format!("{file}.ext"),
                "-out",
                &format!("{file}.pem"),
            ],
        );
        self.pair(file)
    }

    /// A certificate for `dns` signed by the trusted CA that expired in 2020.
    pub fn expired_leaf(&self, file: &str, dns: &str) -> CertPair {
        self.request(file, dns);
        run_openssl(
            self.dir(),
            &[
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-cert",
                "ca.pem",
                "-keyfile",
                "ca.key",
                "-in",
                &format!("{file}.csr"),
                "-out",
                &format!("{file}.pem"),
                "-notext",
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200201000000Z",
                "-extfile",
                &format!("{file}.ext"),
            ],
        );
        self.pair(file)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

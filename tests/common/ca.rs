//! A certificate authority made for one test, issuing server certificates for receiver host
//! names, written as PEM files the secmx configuration points at.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The test CA; its certificate is in `ca_file`.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
    ca_file: PathBuf,
}

/// A certificate chain and its private key, as PEM files.
pub struct Leaf {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

impl TestCa {
    /// Creates the CA and writes `dir/ca.pem`.
    pub fn new(dir: &Path) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "secmx test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let certificate = params.self_signed(&key).expect("CA certificate");
        let ca_file = dir.join("ca.pem");
        write(&ca_file, &certificate.pem());
        TestCa {
            issuer: Issuer::new(params, key),
            dir: dir.to_path_buf(),
            ca_file,
        }
    }

    /// The CA certificate (PEM), for `tls.ca_file`.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Issues a server certificate for `host` and writes `<host>.pem` and `<host>.key`.
    pub fn issue(&self, host: &str) -> Leaf {
        let mut params = CertificateParams::new(vec![host.to_string()]).expect("leaf parameters");
        params.distinguished_name.push(DnType::CommonName, host);
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("leaf key");
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let leaf = Leaf {
            certificate: self.dir.join(format!("{host}.pem")),
            private_key: self.dir.join(format!("{host}.key")),
        };
        write(&leaf.certificate, &certificate.pem());
        write(&leaf.private_key, &key.serialize_pem());
        leaf
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

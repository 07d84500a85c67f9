//! A throwaway certificate authority and key pairs, made at runtime with rcgen.
//!
//! Used by the sandbox (its TLS certificate), by `demo` (the CA the gateway must trust) and by
//! tests that check the gateway refuses a certificate from another CA or for the wrong name:
//! two `TestPki::new()` calls give two unrelated CAs, and `issue(&["wrong.example"])` a wrong
//! name. Nothing here is meant to protect anything real.

use super::SandboxError;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SignatureAlgorithm,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::fmt;
use std::sync::Arc;

/// A self-made certificate authority (`CA:true`) that can issue server certificates.
pub struct TestPki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

impl TestPki {
    /// Creates a fresh CA with its own key; every call gives an unrelated CA.
    pub fn new() -> Result<TestPki, SandboxError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        // A unique subject keeps two CAs apart even in tools that match issuers by name.
        params.distinguished_name.push(
            DnType::CommonName,
            format!("cliniko-gateway sandbox CA {}", uuid::Uuid::new_v4()),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(TestPki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate as PEM (what `upstream.ca_file` should contain).
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// Issues a server certificate for DNS names and/or IP addresses (IPs become IP SANs).
    pub fn issue(&self, names: &[&str]) -> Result<IssuedCert, SandboxError> {
        let key = KeyPair::generate()?;
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans)?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A leaf certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The leaf certificate (signed by the CA).
    pub cert_pem: String,
    /// The leaf's PKCS#8 private key.
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[REDACTED]")
            .finish()
    }
}

impl IssuedCert {
    /// A rustls server config (aws-lc-rs, TLS 1.2+) presenting this certificate, ALPN h2 + http/1.1.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, SandboxError> {
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| SandboxError::Pem("certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|_| SandboxError::Pem("private key"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// A JWT signing key pair as PEM: PKCS#8 private key and SPKI (`PUBLIC KEY`) public key.
#[derive(Clone)]
pub struct SigningKeyPair {
    /// PKCS#8 `PRIVATE KEY` PEM (jsonwebtoken `EncodingKey::from_*_pem` reads it).
    pub private_pem: String,
    /// SPKI `PUBLIC KEY` PEM (jsonwebtoken `DecodingKey::from_*_pem` reads it).
    pub public_pem: String,
}

impl fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyPair")
            .field("private_pem", &"[REDACTED]")
            .field("public_pem", &self.public_pem)
            .finish()
    }
}

fn keypair(alg: &'static SignatureAlgorithm) -> Result<SigningKeyPair, SandboxError> {
    let key = KeyPair::generate_for(alg)?;
    Ok(SigningKeyPair {
        private_pem: key.serialize_pem(),
        public_pem: key.public_key_pem(),
    })
}

/// A fresh 2048-bit RSA key pair (for RS256/PS256 tests; aws-lc-rs can generate RSA).
pub fn rsa_keypair() -> Result<SigningKeyPair, SandboxError> {
    keypair(&rcgen::PKCS_RSA_SHA256)
}

/// A fresh P-256 key pair (for ES256 tests).
pub fn ec_keypair() -> Result<SigningKeyPair, SandboxError> {
    keypair(&rcgen::PKCS_ECDSA_P256_SHA256)
}

/// A fresh Ed25519 key pair (for EdDSA tests).
pub fn ed25519_keypair() -> Result<SigningKeyPair, SandboxError> {
    keypair(&rcgen::PKCS_ED25519)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_key_pairs_round_trip_through_jsonwebtoken() {
        use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Claims {
            sub: String,
            exp: u64,
        }
        type Keys = (EncodingKey, DecodingKey);
        type Loader = fn(&SigningKeyPair) -> Keys;
        let cases: Vec<(Algorithm, SigningKeyPair, Loader)> = vec![
            (Algorithm::RS256, rsa_keypair().unwrap(), |k| {
                (
                    EncodingKey::from_rsa_pem(k.private_pem.as_bytes()).unwrap(),
                    DecodingKey::from_rsa_pem(k.public_pem.as_bytes()).unwrap(),
                )
            }),
            (Algorithm::ES256, ec_keypair().unwrap(), |k| {
                (
                    EncodingKey::from_ec_pem(k.private_pem.as_bytes()).unwrap(),
                    DecodingKey::from_ec_pem(k.public_pem.as_bytes()).unwrap(),
                )
            }),
            (Algorithm::EdDSA, ed25519_keypair().unwrap(), |k| {
                (
                    EncodingKey::from_ed_pem(k.private_pem.as_bytes()).unwrap(),
                    DecodingKey::from_ed_pem(k.public_pem.as_bytes()).unwrap(),
                )
            }),
        ];
        for (alg, pair, load) in cases {
            assert!(
                !format!("{pair:?}").contains("PRIVATE"),
                "Debug hides the key"
            );
            let (enc, dec) = load(&pair);
            let claims = Claims {
                sub: "u1".into(),
                exp: 4_000_000_000,
            };
            let token = jsonwebtoken::encode(&Header::new(alg), &claims, &enc).unwrap();
            let back = jsonwebtoken::decode::<Claims>(&token, &dec, &Validation::new(alg)).unwrap();
            assert_eq!(back.claims.sub, "u1");
            let stranger = ed25519_keypair().unwrap();
            if alg == Algorithm::EdDSA {
                let wrong = DecodingKey::from_ed_pem(stranger.public_pem.as_bytes()).unwrap();
                assert!(
                    jsonwebtoken::decode::<Claims>(&token, &wrong, &Validation::new(alg)).is_err()
                );
            }
        }
    }
}

//! Secrets in the config: never printed, compared by a digest.
//!
//! A reload must tell whether a secret changed (a new admin token, a new HMAC secret) without
//! keeping a second copy around to compare with or serialising it: each [`Secret`] carries the
//! SHA-256 of its bytes, and equality compares those.

use aws_lc_rs::digest;
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretBox};

/// A secret value (zeroed on drop) with the digest it is compared by.
pub struct Secret<S: ?Sized + Zeroize> {
    inner: SecretBox<S>,
    digest: [u8; 32],
}

impl<S: ?Sized + Zeroize + AsRef<[u8]>> Secret<S> {
    /// Wraps a boxed secret.
    pub fn new(value: Box<S>) -> Secret<S> {
        let d = digest::digest(&digest::SHA256, (*value).as_ref());
        // Never a default digest (every secret would compare equal): copy_from_slice panics
        // on a length mismatch, and SHA-256 is 32 bytes.
        let mut digest = [0; 32];
        digest.copy_from_slice(d.as_ref());
        Secret {
            digest,
            inner: SecretBox::new(value),
        }
    }
}

impl<S: ?Sized + Zeroize> ExposeSecret<S> for Secret<S> {
    fn expose_secret(&self) -> &S {
        self.inner.expose_secret()
    }
}

impl<S: ?Sized + Zeroize> PartialEq for Secret<S> {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

// The copy is made by `to_owned` and moved into the box: no second, unzeroed copy is left.
impl<S: ?Sized + Zeroize + ToOwned> Clone for Secret<S>
where
    Box<S>: From<S::Owned>,
{
    fn clone(&self) -> Self {
        Secret {
            inner: SecretBox::new(self.inner.expose_secret().to_owned().into()),
            digest: self.digest,
        }
    }
}

impl<S: ?Sized + Zeroize> std::fmt::Debug for Secret<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl From<Vec<u8>> for Secret<[u8]> {
    fn from(v: Vec<u8>) -> Self {
        Secret::new(v.into_boxed_slice())
    }
}

impl From<String> for Secret<str> {
    fn from(s: String) -> Self {
        Secret::new(s.into_boxed_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_value_and_never_print() {
        let a = Secret::<str>::from("token-a".to_string());
        assert_eq!(a, a.clone());
        assert_ne!(a, Secret::from("token-b".to_string()));
        assert_eq!(format!("{a:?}"), "[REDACTED]");
        assert_eq!(a.clone().expose_secret(), "token-a");
    }
}

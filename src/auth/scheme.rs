//! Which token a request carries: `Authorization: Bearer <JWT>`, or the form every client
//! written for Cliniko sends, `Authorization: Basic base64(<JWT>:)` (the JWT where they put the
//! API key, an empty password). Both lead to the same verification, token cache, policy and
//! limits.
//!
//! Refused before any verification: no header (`token_missing`), two (`ambiguous_credentials`:
//! which one would Cliniko's client have meant?), no or another scheme (`unsupported_scheme`),
//! Basic credentials that do not decode (`token_malformed`) or carry a password
//! (`password_not_empty`), and anything not shaped like a JWT or over [`MAX_TOKEN_BYTES`]. A
//! Cliniko API key sent in place of the JWT is refused on its own ([`Refused::ClinikoKey`]): it
//! is never forwarded, whatever the scheme.

use super::MAX_TOKEN_BYTES;
use crate::error::AuthError;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::{HeaderMap, header};
use std::borrow::Cow;

/// Why no token could be taken from the request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// Refused as this error.
    Auth(AuthError),
    /// A Cliniko API key came instead of a JWT; its fingerprint (safe to log) says which.
    ClinikoKey(String),
}

impl From<AuthError> for Refused {
    fn from(e: AuthError) -> Self {
        Refused::Auth(e)
    }
}

const BOTH_FORMS: &str = "unsupported Authorization scheme: send `Bearer <JWT>`, or `Basic` \
     credentials with the JWT as the username and an empty password";
const BEARER_ONLY: &str = "unsupported Authorization scheme: send `Bearer <JWT>` (Basic \
     credentials are turned off on this gateway)";

/// Longest header value looked at: `Basic ` and base64 of a longest token plus its colon.
const MAX_HEADER_BYTES: usize = "Basic ".len() + (MAX_TOKEN_BYTES + 1).div_ceil(3) * 4;

/// Padding is optional: some clients drop it, and it carries nothing.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The token the request's one `Authorization` header carries.
pub(super) fn token(headers: &HeaderMap, accept_basic: bool) -> Result<Cow<'_, str>, Refused> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let value = all.next().ok_or(AuthError::Missing)?;
    if all.next().is_some() {
        return Err(AuthError::Ambiguous.into());
    }
    if value.len() > MAX_HEADER_BYTES {
        return Err(AuthError::Malformed.into());
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let unsupported = AuthError::UnsupportedScheme(if accept_basic {
        BOTH_FORMS
    } else {
        BEARER_ONLY
    });
    let Some((scheme, rest)) = value.split_once(' ') else {
        if value.eq_ignore_ascii_case("bearer") || value.eq_ignore_ascii_case("basic") {
            return Err(AuthError::Malformed.into());
        }
        // A bare value: some clients put the key (or the token) there with no scheme.
        not_a_key(value)?;
        return Err(unsupported.into());
    };
    if scheme.eq_ignore_ascii_case("bearer") {
        not_a_key(rest)?;
        return Ok(Cow::Borrowed(jwt_shaped(rest)?));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(unsupported.into());
    }
    let mut text = decoded(rest)?;
    let (user, password) = text.split_once(':').ok_or(AuthError::BasicMalformed)?;
    not_a_key(user)?;
    not_a_key(password)?;
    if !accept_basic {
        return Err(unsupported.into());
    }
    if !password.is_empty() {
        return Err(AuthError::PasswordNotEmpty.into());
    }
    let user_len = jwt_shaped(user)?.len();
    // The decoded text is `user:` now: keep the username, no second copy.
    text.truncate(user_len);
    Ok(Cow::Owned(text))
}

/// The text of `base64(user:password)`.
fn decoded(encoded: &str) -> Result<String, AuthError> {
    let bytes = BASE64
        .decode(encoded)
        .map_err(|_| AuthError::BasicMalformed)?;
    String::from_utf8(bytes).map_err(|_| AuthError::BasicMalformed)
}

/// Three base64url parts, not empty, not too long: anything else is not worth verifying.
fn jwt_shaped(token: &str) -> Result<&str, AuthError> {
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed);
    }
    // One pass (this runs on every request): the characters and the dots together.
    let mut dots = 0;
    for b in token.bytes() {
        match b {
            b'.' => dots += 1,
            b'-' | b'_' => {}
            _ if b.is_ascii_alphanumeric() => {}
            _ => return Err(AuthError::Malformed),
        }
    }
    if dots != 2 {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// Refuses `s` if it has the shape of a Cliniko API key (at least 16 characters before the
/// shard suffix).
fn not_a_key(s: &str) -> Result<(), Refused> {
    if crate::credentials::key_shaped(s, 16) {
        return Err(Refused::ClinikoKey(crate::credentials::fingerprint(s)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
    const KEY: &str = "MS0xMjM0NTY3ODkwMTIzNDU2Nzg5LWFiY2RlZg-au2";

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn basic_of(user_password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        )
    }

    fn got(values: &[&str]) -> Result<String, Refused> {
        token(&headers(values), true).map(Cow::into_owned)
    }

    #[test]
    fn bearer_and_basic_yield_the_same_token() {
        assert_eq!(got(&[&format!("Bearer {JWT}")]).unwrap(), JWT);
        assert_eq!(got(&[&format!("bEaReR {JWT}")]).unwrap(), JWT);
        assert_eq!(got(&[&basic_of(&format!("{JWT}:"))]).unwrap(), JWT);
        let unpadded = basic_of(&format!("{JWT}:"))
            .trim_end_matches('=')
            .to_string();
        assert_eq!(got(&[&unpadded]).unwrap(), JWT);
        assert_eq!(
            got(&[&format!("basic {}", &basic_of(&format!("{JWT}:"))[6..])]).unwrap(),
            JWT
        );
    }

    #[test]
    fn each_refusal_has_its_own_error() {
        let auth = |e| Err(Refused::Auth(e));
        assert_eq!(
            token(&HeaderMap::new(), true),
            auth(AuthError::Missing).map(Cow::Owned)
        );
        let two = [format!("Bearer {JWT}"), basic_of(&format!("{JWT}:"))];
        assert_eq!(got(&[&two[0], &two[1]]), auth(AuthError::Ambiguous));
        assert_eq!(got(&[&two[1], &two[0]]), auth(AuthError::Ambiguous));
        assert_eq!(got(&[&two[0], &two[0]]), auth(AuthError::Ambiguous));
        for v in [JWT, "", "Digest username=\"a\"", "Token abc"] {
            assert_eq!(
                got(&[v]),
                auth(AuthError::UnsupportedScheme(BOTH_FORMS)),
                "{v}"
            );
        }
        assert_eq!(
            token(&headers(&[&basic_of(&format!("{JWT}:"))]), false).map(Cow::into_owned),
            auth(AuthError::UnsupportedScheme(BEARER_ONLY))
        );
        assert_eq!(
            got(&[&basic_of(&format!("{JWT}:secret"))]),
            auth(AuthError::PasswordNotEmpty)
        );
        for v in ["Basic !!!", "Basic ", &basic_of(JWT), "Basic /w=="] {
            assert_eq!(got(&[v]), auth(AuthError::BasicMalformed), "{v}");
        }
        for v in [
            &basic_of("alice:"),
            &basic_of(":"),
            "Bearer not-a-jwt",
            "Bearer  x.y.z",
            "Bearer",
            "basic",
        ] {
            assert_eq!(got(&[v]), auth(AuthError::Malformed), "{v}");
        }
    }

    #[test]
    fn size_limit_is_the_same_for_both_forms() {
        let longest = format!("{}.{}.c", "a".repeat(MAX_TOKEN_BYTES - 4), "b");
        assert_eq!(longest.len(), MAX_TOKEN_BYTES);
        assert_eq!(got(&[&basic_of(&format!("{longest}:"))]).unwrap(), longest);
        assert_eq!(got(&[&format!("Bearer {longest}")]).unwrap(), longest);
        let over = format!("a{longest}");
        assert_eq!(
            got(&[&basic_of(&format!("{over}:"))]),
            Err(Refused::Auth(AuthError::Malformed))
        );
        assert_eq!(
            got(&[&format!("Bearer {over}")]),
            Err(Refused::Auth(AuthError::Malformed))
        );
        let far_over = basic_of(&format!("{}:", "a".repeat(4 * MAX_TOKEN_BYTES)));
        assert_eq!(got(&[&far_over]), Err(Refused::Auth(AuthError::Malformed)));
    }

    #[test]
    fn cliniko_keys_are_refused_wherever_they_are_put() {
        let fp = crate::credentials::fingerprint(KEY);
        assert!(fp.starts_with("sha256:") && !fp.contains(KEY));
        for v in [
            basic_of(&format!("{KEY}:")),
            basic_of(&format!("{KEY}:x")),
            basic_of(&format!(":{KEY}")),
            format!("Bearer {KEY}"),
            KEY.to_string(),
        ] {
            assert_eq!(got(&[&v]), Err(Refused::ClinikoKey(fp.clone())), "{v}");
            assert_eq!(
                token(&headers(&[&v]), false).map(Cow::into_owned),
                Err(Refused::ClinikoKey(fp.clone())),
                "also with Basic off: {v}"
            );
        }
        // Not key-shaped: too short a body, no shard suffix, a bad suffix, a JWT.
        for s in [
            "abc-au1",
            "MS0xMjM0NTY3ODkwMTIzNDU2Nzg5",
            "MS0xMjM0NTY3ODkwMTIzNDU2Nzg5-evil.com",
            JWT,
        ] {
            assert!(not_a_key(s).is_ok(), "{s}");
        }
    }
}

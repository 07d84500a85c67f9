//! The one place where every failure becomes an HTTP answer.
//!
//! Each boundary has its own error enum; per-request failures all end up as a [`GatewayError`],
//! which [`GatewayError::into_response`] renders as `{"error": {"code", "message", "request_id"}}`
//! with a stable `code` and an `X-Gateway-Error` marker header, so callers can tell our answers
//! from Cliniko's (which pass through unchanged). Messages never echo a token, key or query.

mod refusal;
pub use refusal::{Limit, Refusal, X_RATELIMIT_RESET, ceil_secs};

use crate::body::Body;
use http::{HeaderValue, Response, StatusCode, header};

/// Header that marks a response the gateway made itself.
pub const GATEWAY_ERROR_HEADER: &str = "x-gateway-error";

/// `Retry-After` of a `too_many_in_flight` refusal, in seconds.
const IN_FLIGHT_RETRY_AFTER: u64 = 1;

/// A stable error code, as only [`GatewayError::error_code`] makes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(&'static str);

impl ErrorCode {
    /// The code, e.g. `forbidden`.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// Why the caller's credentials were refused (a 401, except `Ambiguous` and `KeysUnavailable`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error(
        "no credentials: send Authorization: Bearer <JWT>, or Basic credentials with the JWT as \
         the username and an empty password"
    )]
    Missing,
    /// More than one `Authorization` header: which one was meant cannot be told.
    #[error("more than one Authorization header: send exactly one")]
    Ambiguous,
    /// No scheme, or one other than Bearer and Basic (or Basic while it is turned off); the
    /// text names the accepted forms.
    #[error("{0}")]
    UnsupportedScheme(&'static str),
    /// A Cliniko API key was sent where the JWT goes (it is never forwarded).
    #[error("this gateway holds the Cliniko keys: send your JWT, not a Cliniko API key")]
    ClinikoKeySent,
    /// Basic credentials with a password: the JWT is the username, the password stays empty.
    #[error(
        "Basic credentials must have an empty password: send the JWT as the username and \
         nothing after the colon"
    )]
    PasswordNotEmpty,
    /// Basic credentials that are not base64 of `user:password` in UTF-8.
    #[error("the Basic credentials are not base64 of <JWT>:")]
    BasicMalformed,
    /// Not three base64url parts, bad JSON header, or an unreadable claim set.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// `exp` is in the past (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// Any other reason the token cannot be trusted; the text says which rule failed.
    #[error("the token is invalid: {0}")]
    Invalid(&'static str),
    /// No verification key could be loaded yet (e.g. JWKS never fetched).
    #[error("token verification keys are not available yet")]
    KeysUnavailable,
}

impl AuthError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Ambiguous => "ambiguous_credentials",
            AuthError::UnsupportedScheme(_) => "unsupported_scheme",
            AuthError::ClinikoKeySent => "cliniko_key_sent",
            AuthError::PasswordNotEmpty => "password_not_empty",
            AuthError::Malformed | AuthError::BasicMalformed => "token_malformed",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::Invalid(_) => "token_invalid",
            AuthError::KeysUnavailable => "auth_unavailable",
        }
    }

    /// The `WWW-Authenticate` challenge of a 401: always Bearer, so a browser never offers
    /// its Basic login box, even to callers that sent Basic. An error code only when a
    /// credential was there to be wrong (RFC 6750 §3.1).
    fn challenge(&self) -> Option<HeaderValue> {
        match self {
            AuthError::KeysUnavailable | AuthError::Ambiguous => None,
            AuthError::Missing | AuthError::UnsupportedScheme(_) => {
                Some(HeaderValue::from_static("Bearer"))
            }
            _ => Some(HeaderValue::from_static("Bearer error=\"invalid_token\"")),
        }
    }
}

/// Every way a proxied request can fail, each with a stable code and status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// The request target or framing is unacceptable (nothing was sent upstream).
    #[error("{message}")]
    BadRequest {
        /// Stable code, e.g. `bad_target`.
        code: &'static str,
        /// Human explanation (never echoes caller input).
        message: &'static str,
    },
    /// Not a route the gateway serves.
    #[error("no such route: the gateway proxies /v1/... and answers /healthz and /readyz")]
    NotFound,
    /// The caller's `Accept-Encoding` refuses every coding the gateway can send (identity
    /// included), e.g. `identity;q=0` alone or `*;q=0`; nothing was sent upstream.
    #[error(
        "no acceptable content coding: allow identity, gzip, br or zstd in Accept-Encoding (or send none)"
    )]
    NotAcceptable,
    /// Request body over the configured limit.
    #[error("request body is larger than the configured limit of {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// JWT verification failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The verified user has no stored Cliniko key.
    #[error("no Cliniko API key is stored for this user; ask ops to add one")]
    NoCredential,
    /// The caller's grants do not allow this call (the policy); nothing was sent upstream.
    #[error("forbidden: needs a grant allowing {needed}")]
    Forbidden {
        /// Method and `/v1/<resource>` (plus grant names that would allow it).
        needed: String,
    },
    /// Cliniko answered 401 to the stored key: ops must rotate it.
    #[error(
        "Cliniko rejected the stored API key for this user; ops have been alerted to rotate it"
    )]
    CredentialRejected,
    /// Could not connect to or talk to Cliniko.
    #[error("Cliniko could not be reached")]
    UpstreamUnavailable,
    /// The connection to Cliniko failed before the request was sent (safe to resend).
    #[error("Cliniko could not be reached")]
    UpstreamConnect,
    /// A reused connection to Cliniko closed before answering (a GET may be resent).
    #[error("Cliniko could not be reached")]
    UpstreamClosed,
    /// A rate limit refused the request (429; `limit` says which).
    #[error("{0}")]
    RateLimited(Refusal),
    /// The caller already has `upstream.max_in_flight_per_user` requests to Cliniko whose
    /// answers it has not finished reading (429, refused at once, nothing sent).
    #[error(
        "this caller already has {max} requests in flight to Cliniko whose answers are not yet \
         fully read; finish reading (or close) them, then retry"
    )]
    TooManyInFlight {
        /// The configured cap.
        max: usize,
    },
    /// The shared rate-limit store (Redis) is down and `redis.failure = "closed"`.
    #[error("the rate limiter is unavailable; retry shortly")]
    RateLimiterUnavailable,
    /// Cliniko did not answer within the configured timeout.
    #[error("Cliniko did not answer in time")]
    UpstreamTimeout,
    /// A refusal by one of the gateway's own routes outside the proxy (enrolment), with its
    /// own status and code. The message is written by that route and never holds a secret.
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// Stable code, e.g. `key_in_use`.
        code: &'static str,
        /// Human explanation.
        message: String,
    },
    /// A bug; details go to the log, never to the caller.
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code_and_status().0
    }

    /// The code as a typed value, for the request context.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode(self.code())
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.code_and_status().1
    }

    fn code_and_status(&self) -> (&'static str, StatusCode) {
        use GatewayError as E;
        use StatusCode as S;
        match self {
            E::BadRequest { code, .. } => (code, S::BAD_REQUEST),
            E::NotFound => ("route_not_found", S::NOT_FOUND),
            E::NotAcceptable => ("not_acceptable", S::NOT_ACCEPTABLE),
            E::BodyTooLarge { .. } => ("body_too_large", S::PAYLOAD_TOO_LARGE),
            E::Auth(e @ AuthError::KeysUnavailable) => (e.code(), S::SERVICE_UNAVAILABLE),
            E::Auth(e @ AuthError::Ambiguous) => (e.code(), S::BAD_REQUEST),
            E::Auth(e) => (e.code(), S::UNAUTHORIZED),
            E::NoCredential => ("no_credential", S::FORBIDDEN),
            E::Forbidden { .. } => ("forbidden", S::FORBIDDEN),
            E::CredentialRejected => ("credential_rejected", S::BAD_GATEWAY),
            E::UpstreamUnavailable | E::UpstreamConnect | E::UpstreamClosed => {
                ("upstream_unavailable", S::BAD_GATEWAY)
            }
            E::RateLimited(_) => ("rate_limited", S::TOO_MANY_REQUESTS),
            E::TooManyInFlight { .. } => ("too_many_in_flight", S::TOO_MANY_REQUESTS),
            E::RateLimiterUnavailable => ("rate_limiter_unavailable", S::SERVICE_UNAVAILABLE),
            E::UpstreamTimeout => ("upstream_timeout", S::GATEWAY_TIMEOUT),
            E::Refused { status, code, .. } => (code, *status),
            E::Internal => ("internal", S::INTERNAL_SERVER_ERROR),
        }
    }

    /// Renders the one JSON error shape; `request_id` is echoed so callers can quote it.
    pub fn into_response(self, request_id: Option<&str>) -> Response<Body> {
        let mut body = serde_json::json!({
            "error": {
                "code": self.code(),
                "message": self.to_string(),
                "request_id": request_id,
            }
        });
        if let GatewayError::RateLimited(r) = &self {
            body["error"]["limit"] = r.limit.as_str().into();
            body["error"]["retry_after"] = r.retry_after_secs.into();
        }
        if let GatewayError::TooManyInFlight { .. } = &self {
            body["error"]["retry_after"] = IN_FLIGHT_RETRY_AFTER.into();
        }
        let mut resp = json_response(self.status(), &body);
        let h = resp.headers_mut();
        h.insert(GATEWAY_ERROR_HEADER, HeaderValue::from_static(self.code()));
        match &self {
            GatewayError::RateLimited(r) => refusal::apply(h, r),
            // No quota to quote: a slot frees as soon as one of the caller's answers is read.
            GatewayError::TooManyInFlight { .. } => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(IN_FLIGHT_RETRY_AFTER),
                );
            }
            _ => {}
        }
        if let GatewayError::Auth(e) = &self
            && let Some(v) = e.challenge()
        {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

/// A JSON answer the gateway makes itself (errors, health, enrolment, admin): never stored
/// by a cache on the way.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_errors_are_401_with_challenge() {
        let r = GatewayError::Auth(AuthError::Expired).into_response(Some("rid"));
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        assert_eq!(r.headers()[GATEWAY_ERROR_HEADER], "token_expired");
    }

    #[test]
    fn credential_errors_keep_a_bearer_challenge_and_their_status() {
        for (e, status, challenge) in [
            (AuthError::Missing, 401, Some("Bearer")),
            (AuthError::UnsupportedScheme("x"), 401, Some("Bearer")),
            (
                AuthError::ClinikoKeySent,
                401,
                Some("Bearer error=\"invalid_token\""),
            ),
            (
                AuthError::PasswordNotEmpty,
                401,
                Some("Bearer error=\"invalid_token\""),
            ),
            (AuthError::Ambiguous, 400, None),
            (AuthError::KeysUnavailable, 503, None),
        ] {
            let r = GatewayError::Auth(e.clone()).into_response(None);
            assert_eq!(r.status(), status, "{e:?}");
            assert_eq!(
                r.headers()
                    .get(header::WWW_AUTHENTICATE)
                    .map(|v| v.to_str().unwrap()),
                challenge,
                "{e:?}"
            );
        }
    }

    #[test]
    fn too_many_in_flight_is_a_429_to_retry_in_a_second() {
        let r = GatewayError::TooManyInFlight { max: 16 }.into_response(Some("rid"));
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(r.headers()[GATEWAY_ERROR_HEADER], "too_many_in_flight");
        assert!(
            !r.headers().contains_key("x-ratelimit-limit"),
            "not a rate quota"
        );
    }

    #[test]
    fn codes_are_distinct() {
        let all = [
            AuthError::Ambiguous.code(),
            AuthError::UnsupportedScheme("").code(),
            AuthError::ClinikoKeySent.code(),
            AuthError::PasswordNotEmpty.code(),
            AuthError::Malformed.code(),
            AuthError::Missing.code(),
            GatewayError::NotFound.code(),
            GatewayError::NotAcceptable.code(),
            GatewayError::NoCredential.code(),
            GatewayError::Forbidden {
                needed: "GET /v1".into(),
            }
            .code(),
            GatewayError::CredentialRejected.code(),
            GatewayError::UpstreamUnavailable.code(),
            GatewayError::UpstreamTimeout.code(),
            GatewayError::Internal.code(),
            GatewayError::BodyTooLarge { limit: 1 }.code(),
            GatewayError::RateLimiterUnavailable.code(),
            GatewayError::TooManyInFlight { max: 1 }.code(),
            GatewayError::RateLimited(Refusal {
                limit: Limit::Key,
                retry_after_secs: 1,
                quota: 1,
                window_secs: 1,
            })
            .code(),
        ];
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
    }
}

//! Self-service enrolment: each person connects their own Cliniko key, and nobody else ever
//! sees it.
//!
//! Owns two routes on the public port, outside Cliniko's `/v1` so they cannot clash:
//! - `/gateway/v1/me/cliniko-key`: `PUT` (body `{"key": "..."}`, never the URL), `GET`,
//!   `DELETE`, for a verified caller whose token carries the enrolment grant (`enrol.grant`,
//!   a claim value that needs no `[policy.grants]` paths; 403 `forbidden` otherwise);
//! - `/gateway/connect`: the page a person pastes their key into (`page`).
//!
//! A `PUT` checks the key with Cliniko itself (`GET /v1/user` on the key's shard, through the
//! in-flight cap, the rate limits and the upstream client every request uses), learns the
//! Cliniko user's id (the budget label: keys of one Cliniko user share a budget), then seals
//! and stores it under the store's lock; the answer has the fingerprint, shard, Cliniko user
//! name and verification time, never the key. Refused: 400 `bad_body` / `invalid_key`, 413,
//! 409 `key_in_use` (a key another person connected; whose is never said), 422 `key_refused`
//! (Cliniko refused it) and 503 `cliniko_unreachable`, each with nothing stored. Every `PUT`
//! and `DELETE` is an audit record (target `audit`, `event = "cliniko_key"`).

mod page;

use crate::auth::{Authenticator, User};
use crate::body::Body;
use crate::context::Context as RequestContext;
use crate::credentials::{AddOutcome, ApiKey, Credentials, KeyStoreError, NewKey};
use crate::error::{GatewayError, json_response};
use crate::guard::Limits;
use crate::policy::Policy;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

/// The API's path.
pub const API_PATH: &str = "/gateway/v1/me/cliniko-key";
/// The page's path.
pub const PAGE_PATH: &str = "/gateway/connect";
/// Largest `PUT` body: a key is well under 100 bytes.
const MAX_BODY: u64 = 4096;
/// Largest `/v1/user` answer read.
const MAX_USER_BYTES: usize = 64 * 1024;

/// A `PUT` or `DELETE` answer, and what a `PUT` stored (for the audit record).
type Answer = (Response<Body>, Option<AddOutcome>);

/// What checks a key with Cliniko: the inner part of the journey (in-flight cap, rate
/// limits, upstream), given a request carrying the candidate credential.
pub type Verify = BoxCloneSyncService<Request<Body>, Response<Body>, GatewayError>;

/// Branches enrolment's routes off the journey (a [`Step`](crate::step::Step)); built with
/// each stack, since it verifies tokens with the serving authenticator and policy.
pub struct EnrolRoutes {
    /// The claim value that allows a caller to enrol (`enrol.grant`).
    pub grant: String,
    /// The key store enrolment writes to.
    pub credentials: Arc<Credentials>,
    /// The message limits the routes apply.
    pub limits: Arc<Limits>,
    /// The stack's authenticator.
    pub authn: Arc<Authenticator>,
    /// The stack's policy.
    pub policy: Arc<Policy>,
    /// What checks a key with Cliniko.
    pub verify: Verify,
}

impl crate::step::Step for EnrolRoutes {
    async fn run<S: crate::step::Next>(
        self: Arc<Self>,
        inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        match req.uri().path() {
            API_PATH | PAGE_PATH => self.handle(req).await,
            _ => inner.oneshot(req).await,
        }
    }
}

impl EnrolRoutes {
    async fn handle(&self, req: Request<Body>) -> Result<Response<Body>, GatewayError> {
        crate::guard::check_message(&req, &self.limits, MAX_BODY)?;
        if req.uri().path() == PAGE_PATH {
            return page::serve(req.method());
        }
        let user = self.authn.authenticate(req.headers()).await?;
        let ctx = RequestContext::of(&req).cloned();
        if let Some(c) = &ctx {
            c.set_user(user.id.clone(), user.app.clone());
        }
        if !self.policy.names(&user.claims, &self.grant) {
            let needed = format!("{} {API_PATH} ({})", req.method(), self.grant);
            return Err(GatewayError::Forbidden { needed });
        }
        let creds = &self.credentials;
        let (action, done) = match *req.method() {
            Method::GET | Method::HEAD => return connected(creds, &user),
            Method::PUT => ("connect", self.connect(req, &user).await),
            Method::DELETE => ("disconnect", disconnect(creds, &user).await),
            _ => {
                return Err(refused(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "use GET, PUT or DELETE",
                ));
            }
        };
        audit(ctx.as_deref(), action, &done);
        done.map(|(resp, _)| resp)
    }

    /// `PUT`: read, check with Cliniko, store; the answer and what was stored.
    async fn connect(&self, req: Request<Body>, user: &User) -> Result<Answer, GatewayError> {
        let ctx = RequestContext::of(&req).cloned();
        let key = read_key(req.into_body()).await?;
        crate::credentials::check_api_key(&key).map_err(invalid_key)?;
        let cred = self
            .credentials
            .candidate(key.clone())
            .map_err(invalid_key)?;
        let mut probe = Request::get("/v1/user")
            .body(Body::empty())
            .map_err(|_| GatewayError::Internal)?;
        probe.extensions_mut().insert(user.clone());
        probe.extensions_mut().insert(cred);
        if let Some(c) = ctx {
            probe.extensions_mut().insert(c);
        }
        let owner = cliniko_user(self.verify.clone().oneshot(probe).await).await?;
        let verified_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let new = NewKey {
            user: user.id.to_string(),
            key,
            cliniko_user: Some(owner.id),
            verified_at: Some(verified_at.to_string()),
            exclusive: true,
        };
        let out = self.credentials.add(new).await.map_err(store_error)?;
        let body = json!({
            "fingerprint": out.fingerprint,
            "shard": out.shard.as_str(),
            "cliniko_user": owner.name,
            "verified_at": verified_at.to_string(),
        });
        Ok((json_response(StatusCode::OK, &body), Some(out)))
    }
}

/// `GET`: what is connected for the caller (never the key).
fn connected(creds: &Credentials, user: &User) -> Result<Response<Body>, GatewayError> {
    let c = creds.lookup(&user.id).ok_or_else(none)?;
    let body = json!({
        "fingerprint": &*c.fingerprint,
        "shard": c.shard.as_str(),
        "verified_at": c.verified_at.as_deref(),
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// `DELETE`: removes the caller's key; their next `/v1` request gets 403 `no_credential`.
async fn disconnect(creds: &Credentials, user: &User) -> Result<Answer, GatewayError> {
    if !creds.remove(&user.id).await.map_err(store_error)? {
        return Err(none());
    }
    Ok((
        json_response(StatusCode::OK, &json!({"removed": true})),
        None,
    ))
}

/// The `{"key": "..."}` body, at most [`MAX_BODY`] bytes.
async fn read_key(body: Body) -> Result<ApiKey, GatewayError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Put {
        key: String,
    }
    let bytes = Limited::new(body, MAX_BODY as usize)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                GatewayError::BodyTooLarge { limit: MAX_BODY }
            } else {
                bad_body()
            }
        })?
        .to_bytes();
    // serde's messages can quote the input (the key): only the fact is reported.
    let put: Put = serde_json::from_slice(&bytes).map_err(|_| bad_body())?;
    Ok(ApiKey::new(put.key.trim().to_string()))
}

/// Who owns the key, from Cliniko's `GET /v1/user` answer.
struct Owner {
    id: String,
    name: String,
}

async fn cliniko_user(answer: Result<Response<Body>, GatewayError>) -> Result<Owner, GatewayError> {
    let unreachable = |why: &str| {
        refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "cliniko_unreachable",
            &format!("Cliniko could not check the key ({why}); nothing was stored, try again"),
        )
    };
    let resp = match answer {
        Ok(r) if r.status() == StatusCode::OK => r,
        Ok(r) => return Err(unreachable(&format!("it answered {}", r.status().as_u16()))),
        Err(GatewayError::CredentialRejected) => {
            return Err(refused(
                StatusCode::UNPROCESSABLE_ENTITY,
                "key_refused",
                "Cliniko refused this API key (mistyped, revoked or expired?); nothing was stored",
            ));
        }
        Err(
            GatewayError::UpstreamUnavailable
            | GatewayError::UpstreamConnect
            | GatewayError::UpstreamClosed
            | GatewayError::UpstreamTimeout,
        ) => return Err(unreachable("it could not be reached")),
        Err(e) => return Err(e),
    };
    let bytes = Limited::new(resp.into_body(), MAX_USER_BYTES)
        .collect()
        .await
        .map_err(|_| unreachable("its answer could not be read"))?
        .to_bytes();
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|_| unreachable("its answer is not JSON"))?;
    let id = match &v["id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(unreachable("its answer has no user id")),
    };
    let part = |f: &str| v[f].as_str().unwrap_or("").trim().to_string();
    let name = format!("{} {}", part("first_name"), part("last_name"))
        .trim()
        .to_string();
    Ok(Owner { id, name })
}

/// One audit record per `PUT` or `DELETE`, refusals included; never the key.
fn audit(ctx: Option<&RequestContext>, action: &str, done: &Result<Answer, GatewayError>) {
    let (status, code) = match done {
        Ok(_) => (200, None),
        Err(e) => (e.status().as_u16(), Some(e.code())),
    };
    let stored = done.as_ref().ok().and_then(|(_, o)| o.as_ref());
    tracing::info!(
        target: crate::audit::TARGET,
        event = "cliniko_key",
        action,
        time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string().as_str(),
        request_id = ctx.map(|c| c.id.as_str()),
        client = ctx.and_then(|c| c.client_addr).map(tracing::field::display),
        user = ctx.and_then(|c| c.user()),
        status,
        code,
        fingerprint = stored.map(|o| o.fingerprint.as_str()),
        shard = stored.map(|o| o.shard.as_str()),
    );
}

fn refused(status: StatusCode, code: &'static str, message: &str) -> GatewayError {
    GatewayError::Refused {
        status,
        code,
        message: message.to_string(),
    }
}

fn none() -> GatewayError {
    refused(
        StatusCode::NOT_FOUND,
        "no_credential",
        "no Cliniko API key is connected for you",
    )
}

fn bad_body() -> GatewayError {
    refused(
        StatusCode::BAD_REQUEST,
        "bad_body",
        "send a JSON body {\"key\": \"<your Cliniko API key>\"}",
    )
}

/// The key's form is wrong; the message says how, never what it is.
fn invalid_key(e: KeyStoreError) -> GatewayError {
    refused(
        StatusCode::BAD_REQUEST,
        "invalid_key",
        &format!("{e}; copy the whole key from Cliniko (My Info → Manage API keys)"),
    )
}

fn store_error(e: KeyStoreError) -> GatewayError {
    match e {
        KeyStoreError::KeyInUse => refused(
            StatusCode::CONFLICT,
            "key_in_use",
            "this Cliniko API key is already connected for another person; connect your own \
             key (each person has their own in Cliniko)",
        ),
        KeyStoreError::InvalidName { .. } => refused(
            StatusCode::BAD_REQUEST,
            "bad_user",
            "your token's user name cannot be stored (empty, too long or control characters)",
        ),
        e => {
            tracing::error!(error = %e, "enrolment: the key store could not be written");
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "key_store_unavailable",
                "the key store is unavailable; nothing was stored, try again shortly",
            )
        }
    }
}

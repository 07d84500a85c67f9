//! The admin surface: a separate listener (loopback by default) with its own bearer token,
//! served by the same accept loop as the public port ([`crate::server::serve`]), so it has the
//! same timeouts, a connection limit and accept back-off. The proxy port never serves these
//! routes.
//!
//! - `POST /admin/cache/purge?all=true` | `?user=<name>` | `?prefix=/v1/patients`: on every
//!   replica when Redis is configured (the cache bus carries it)
//! - `POST /admin/reload`: re-read the key store (a bad file is refused; the old one stays)
//! - `GET /admin/keys`: users, key ids, fingerprints and shards — never keys
//! - `GET /metrics`: Prometheus text (OpenMetrics). Behind the same token as everything else
//!   here: one rule for the whole port is simpler to audit than an exception, and Prometheus
//!   sends a bearer token with `authorization.credentials_file` in its scrape config.

use crate::body::Body;
use crate::cache::Invalidation;
use crate::config::AdminConfig;
use crate::metrics::{Metrics, ReloadTrigger};
use crate::reload::Reloader;
use http::{Method, Request, Response, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;

/// Everything the admin routes act on.
pub struct Admin {
    token: SecretString,
    reloader: Arc<Reloader>,
    metrics: Arc<Metrics>,
}

impl Admin {
    /// Builds the admin state; the token comes from config resolution, never the file.
    pub fn new(
        cfg: &AdminConfig,
        reloader: Arc<Reloader>,
        metrics: Arc<Metrics>,
    ) -> Option<Arc<Admin>> {
        let token = cfg.token.as_ref()?.expose_secret().to_string();
        Some(Arc::new(Admin {
            token: SecretString::from(token),
            reloader,
            metrics,
        }))
    }

    /// The admin routes as a service, for [`crate::server::serve`] on the admin listener.
    pub fn service(self: Arc<Self>) -> impl crate::server::Served {
        tower::service_fn(move |req: Request<Body>| {
            let admin = self.clone();
            async move { Ok::<_, Infallible>(admin.handle(req).await) }
        })
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(given) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        // Constant time: the token is a shared secret.
        aws_lc_rs::constant_time::verify_slices_are_equal(
            given.as_bytes(),
            self.token.expose_secret().as_bytes(),
        )
        .is_ok()
    }

    async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        if !self.authorized(&req) {
            return reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": {"code": "admin_unauthorized", "message": "send Authorization: Bearer <admin token>"}}),
            );
        }
        let query: Vec<(String, String)> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let arg = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        match (req.method(), req.uri().path()) {
            (&Method::POST, "/admin/cache/purge") => {
                self.purge(arg("all"), arg("user"), arg("prefix"))
            }
            (&Method::POST, "/admin/reload") => {
                match self.reloader.reload(ReloadTrigger::Admin).await {
                    Ok(r) => reply(
                        StatusCode::OK,
                        json!({"reloaded": true, "users": r.users, "changed": r.changed, "restart_needed": r.restart_needed}),
                    ),
                    Err(e) => reply(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"error": {"code": "reload_failed", "message": e.to_string()}}),
                    ),
                }
            }
            (&Method::GET, "/metrics") => match self.metrics.render().await {
                Ok(text) => Response::builder()
                    .header(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
                    .header(header::CACHE_CONTROL, "no-store")
                    .body(Body::from(text))
                    .unwrap_or_default(),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": {"code": "internal"}}),
                ),
            },
            (&Method::GET, "/admin/keys") => {
                let store = self.reloader.fixed.credentials.current();
                let mut users: Vec<_> = store
                    .users()
                    .map(|(u, c)| json!({"user": u, "key_id": &*c.key_id, "fingerprint": &*c.fingerprint, "shard": c.shard.as_str(), "cliniko_user": c.cliniko_user.as_deref()}))
                    .collect();
                users.sort_by(|a, b| a["user"].as_str().cmp(&b["user"].as_str()));
                reply(StatusCode::OK, json!({"users": users}))
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                json!({"error": {"code": "route_not_found"}}),
            ),
        }
    }

    fn purge(&self, all: Option<&str>, user: Option<&str>, prefix: Option<&str>) -> Response<Body> {
        let live = self.reloader.current();
        let Some(cache) = &live.cache else {
            return reply(
                StatusCode::CONFLICT,
                json!({"error": {"code": "cache_disabled"}}),
            );
        };
        match (all, user, prefix) {
            (Some("true"), None, None) => {
                cache.purge_all();
                cache.publish(Invalidation::All);
                reply(StatusCode::OK, json!({"purged": "all"}))
            }
            (None, Some(u), None) => match self.reloader.fixed.credentials.lookup(u) {
                Some(c) => {
                    cache.purge_credential(cache.id_of(&c));
                    // Other replicas get the fingerprint and find their own entries by it.
                    cache.publish(Invalidation::Credential {
                        fingerprint: c.fingerprint.to_string(),
                    });
                    reply(
                        StatusCode::OK,
                        json!({"purged": "credential", "key_id": &*c.key_id}),
                    )
                }
                None => reply(
                    StatusCode::NOT_FOUND,
                    json!({"error": {"code": "no_credential"}}),
                ),
            },
            (None, None, Some(p)) if p == "/v1" || p.starts_with("/v1/") => {
                cache.purge_prefix(p);
                cache.publish(Invalidation::Prefixes {
                    prefixes: vec![p.to_string()],
                });
                reply(StatusCode::OK, json!({"purged": "prefix", "prefix": p}))
            }
            _ => reply(
                StatusCode::BAD_REQUEST,
                json!({"error": {"code": "bad_purge", "message": "give exactly one of all=true, user=<name>, prefix=/v1/..."}}),
            ),
        }
    }
}

fn reply(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    crate::error::json_response(status, &v)
}

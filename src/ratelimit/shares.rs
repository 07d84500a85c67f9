//! Which line, class and weight a request waits with on a key budget ([`super::fair`]), from
//! `[ratelimit.shares]` and the verified token: the app's own entry (`azp`, else
//! `client_id`), else the best of its groups' entries (first class, then heaviest weight),
//! else the default. Rebuilt on every config reload (cheap), so new weights apply to the next
//! request; the queues themselves live on in the key budgets.

use crate::auth::User;
use crate::config::shares::{Class, OTHER_APP, Share, SharesConfig};
use crate::metrics::{AppCounts, AppMetrics};
use std::collections::HashMap;
use std::sync::Arc;

/// How one request waits.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Its priority class.
    pub class: Class,
    /// Its app's weight within the class.
    pub weight: u32,
    /// The line it queues in: the app the token names (one shared line for tokens naming none).
    pub app: Arc<str>,
    /// Where its admission or refusal is counted (its app's label, or `other`).
    pub counts: Arc<AppCounts>,
}

/// The compiled `[ratelimit.shares]`.
pub struct Shares {
    cfg: SharesConfig,
    /// Each configured app's share, and where its admissions are counted.
    apps: HashMap<String, (Share, Arc<AppCounts>)>,
    other: Arc<AppCounts>,
    no_app: Arc<str>,
}

impl Shares {
    /// Compiles `cfg` (validated), taking each configured app's metric handles from `m`.
    pub fn new(cfg: &SharesConfig, m: &AppMetrics) -> Shares {
        Shares {
            cfg: cfg.clone(),
            apps: (cfg.apps.iter())
                .map(|(name, s)| (name.clone(), (*s, Arc::new(m.app(name)))))
                .collect(),
            other: Arc::new(m.app(OTHER_APP)),
            // Not a name `app_of` can produce (it keeps only non-empty names).
            no_app: Arc::from(""),
        }
    }

    /// How `user`'s request waits.
    pub fn of(&self, user: Option<&User>) -> Caller {
        let app = user.and_then(|u| u.app.clone());
        let (share, counts) = match app.as_deref().and_then(|a| self.apps.get(a)) {
            Some((share, counts)) => (*share, counts.clone()),
            None => (
                user.and_then(|u| self.best_group(u))
                    .unwrap_or(self.cfg.default),
                self.other.clone(),
            ),
        };
        Caller {
            class: share.class,
            weight: share.weight,
            app: app.unwrap_or_else(|| self.no_app.clone()),
            counts,
        }
    }

    fn best_group(&self, user: &User) -> Option<Share> {
        // First class first, then the heaviest weight.
        super::groups_of(user, &self.cfg.group_claim)
            .filter_map(|g| self.cfg.groups.get(g).copied())
            .min_by_key(|s| (s.class, std::cmp::Reverse(s.weight)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(app: Option<&str>, groups: serde_json::Value) -> User {
        let mut claims = serde_json::Map::new();
        claims.insert("groups".into(), groups);
        User {
            id: Arc::from("u"),
            claims: Arc::new(claims),
            app: app.map(Arc::from),
        }
    }

    #[test]
    fn the_app_beats_its_groups_which_beat_the_default() {
        let cfg: SharesConfig = toml::from_str(
            r#"
default = { weight = 2, class = "batch" }
apps = { reception = { weight = 5 } }
groups = { etl = { weight = 9, class = "batch" }, desk = { weight = 3 }, ops = { weight = 4 } }
"#,
        )
        .unwrap();
        let m = AppMetrics::default();
        let s = Shares::new(&cfg, &m);
        let c = s.of(Some(&user(Some("reception"), serde_json::json!(["etl"]))));
        assert_eq!(
            (c.class, c.weight, &*c.app),
            (Class::Interactive, 5, "reception")
        );
        // An unnamed app in several groups: interactive beats batch, then the heaviest.
        let c = s.of(Some(&user(
            Some("sync"),
            serde_json::json!(["etl", "desk", "ops"]),
        )));
        assert_eq!(
            (c.class, c.weight, &*c.app),
            (Class::Interactive, 4, "sync")
        );
        let c = s.of(Some(&user(Some("sync"), serde_json::json!("etl"))));
        assert_eq!((c.class, c.weight), (Class::Batch, 9));
        let c = s.of(Some(&user(None, serde_json::json!(7))));
        assert_eq!((c.class, c.weight, &*c.app), (Class::Batch, 2, ""));
        assert_eq!(s.of(None).weight, 2);
        // Counted under the configured name, or `other`.
        s.of(Some(&user(Some("reception"), serde_json::Value::Null)))
            .counts
            .admitted(std::time::Duration::ZERO);
        s.of(Some(&user(Some("sync"), serde_json::Value::Null)))
            .counts
            .admitted(std::time::Duration::ZERO);
        assert_eq!(m.app("reception").admitted_total(), 1);
        assert_eq!(m.app(OTHER_APP).admitted_total(), 1);
    }
}

//! Which Cliniko shard a key belongs to, and that shard's base URL.
//!
//! The shard is the key's suffix after its last hyphen; no suffix means `au1`. A suffix that is
//! not `^[a-z]{2}[0-9]{1,2}$` is refused, so a crafted key can never choose the upstream host.

use crate::config::{ConfigError, UpstreamConfig};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// A validated shard name such as `au1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard(Arc<str>);

/// The key's suffix is not a shard name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the API key's shard suffix is not a valid shard name")]
pub struct BadShard;

impl Shard {
    /// The shard of a Cliniko API key (never echoes the key).
    pub fn from_key(key: &str) -> Result<Shard, BadShard> {
        match key.rsplit_once('-') {
            None => Ok(Shard("au1".into())),
            Some((_, suffix)) => Shard::parse(suffix),
        }
    }

    /// Parses a bare shard name.
    pub fn parse(s: &str) -> Result<Shard, BadShard> {
        if crate::config::is_shard_name(s) {
            Ok(Shard(s.into()))
        } else {
            Err(BadShard)
        }
    }

    /// The name, shared (for the request context).
    pub fn name(&self) -> Arc<str> {
        self.0.clone()
    }

    /// The name, e.g. `au1`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0) // honours width: `keys list` lines its shard column up with `{:<6}`
    }
}

/// Where one shard lives: scheme, authority and path prefix (e.g. `/v1`).
#[derive(Debug, Clone)]
pub struct ShardBase {
    /// `https`.
    pub scheme: http::uri::Scheme,
    /// Host and port.
    pub authority: http::uri::Authority,
    /// Path prefix without trailing slash, e.g. `/v1`.
    pub prefix: String,
}

impl ShardBase {
    fn new(uri: &http::Uri) -> Option<ShardBase> {
        Some(ShardBase {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// The base as a URL string, e.g. `https://api.au1.cliniko.com/v1`.
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

/// Maps shards to base URLs: explicit overrides first, then the template.
#[derive(Debug)]
pub struct ShardRouter {
    template: String,
    overrides: BTreeMap<Shard, Arc<ShardBase>>,
    // Template results, built once per shard seen (shards come only from stored keys).
    derived: RwLock<HashMap<Shard, Arc<ShardBase>>>,
}

impl ShardRouter {
    /// Builds the router from validated config.
    pub fn new(cfg: &UpstreamConfig) -> Result<ShardRouter, ConfigError> {
        let mut overrides = BTreeMap::new();
        for (name, url) in &cfg.shards {
            let field = format!("upstream.shards.{name}");
            let shard = Shard::parse(name)
                .map_err(|_| ConfigError::new(&field, "not a shard name", "use e.g. au1"))?;
            let base = ShardBase::new(url).ok_or_else(|| {
                ConfigError::new(&field, "not a valid URL", "use https://host:port/v1")
            })?;
            overrides.insert(shard, Arc::new(base));
        }
        Ok(ShardRouter {
            template: cfg.url_template.clone(),
            overrides,
            derived: RwLock::new(HashMap::new()),
        })
    }

    /// The base for `shard`. Template results are valid because shard names are `[a-z0-9]`.
    pub fn base(&self, shard: &Shard) -> Option<Arc<ShardBase>> {
        if let Some(b) = self.overrides.get(shard) {
            return Some(b.clone());
        }
        if let Some(b) = self.derived.read().ok()?.get(shard) {
            return Some(b.clone());
        }
        let url = self.template.replace("{shard}", shard.as_str());
        let b = Arc::new(ShardBase::new(&url.parse().ok()?)?);
        if let Ok(mut m) = self.derived.write() {
            m.insert(shard.clone(), b.clone());
        }
        Some(b)
    }

    /// Every explicitly configured base (used to recognise links to rewrite).
    pub fn override_bases(&self) -> impl Iterator<Item = &ShardBase> {
        self.overrides.values().map(|b| &**b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_suffix_after_last_hyphen() {
        assert_eq!(Shard::from_key("abc-def-uk2").unwrap().as_str(), "uk2");
        assert_eq!(Shard::from_key("abcdef").unwrap().as_str(), "au1");
        assert!(Shard::from_key("abc-evil.com").is_err());
        assert!(Shard::from_key("abc-").is_err());
        assert!(Shard::from_key("abc-au1/x").is_err());
        let uk2 = Shard::from_key("abc-uk2").unwrap();
        assert_eq!(
            format!("{uk2:<6}|{uk2}"),
            "uk2   |uk2",
            "padded only when asked"
        );
    }

    #[test]
    fn template_and_override() {
        let cfg: UpstreamConfig = toml::from_str(
            "user_agent = \"A (a@b.c)\"\n[shards]\nuk2 = \"https://127.0.0.1:9443/v1/\"",
        )
        .unwrap();
        let r = ShardRouter::new(&cfg).unwrap();
        let au = r.base(&Shard::parse("au1").unwrap()).unwrap();
        assert_eq!(au.url(), "https://api.au1.cliniko.com/v1");
        let uk = r.base(&Shard::parse("uk2").unwrap()).unwrap();
        assert_eq!(uk.url(), "https://127.0.0.1:9443/v1");
    }
}

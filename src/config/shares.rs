//! `[ratelimit.shares]`: how the requests waiting on one key budget are shared among the
//! calling apps (weighted fair queuing, see `ratelimit::fair`), and its validation.

use super::ConfigError;
use super::validate::refuse_if;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Heaviest weight: beyond it one app's share no longer changes anything measurable, and the
/// scheduler's virtual time keeps its precision.
pub const MAX_WEIGHT: u32 = 1000;

/// The metrics label of every app not named in `apps` (so no app may be named it).
pub const OTHER_APP: &str = "other";

/// A priority class: every waiting `interactive` request is admitted before any `batch` one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// People are waiting on it (front desk, booking pages).
    Interactive,
    /// Jobs that can wait (syncs, exports, reports).
    Batch,
}

settings! {
    /// One app's (or group's) share: its class, and its weight within the class.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Share {
        /// Relative share of the budget among the waiting apps of its class (1..=1000).
        pub weight: u32 = 1,
        /// `interactive` (admitted first) or `batch`.
        pub class: Class = Class::Interactive,
    }
}

settings! {
    /// `[ratelimit.shares]`.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct SharesConfig {
        /// The share of an app named by no entry below (and of tokens naming no app).
        pub default: Share = Share::default(),
        /// The JWT claim holding the caller's groups (a string or an array of strings).
        pub group_claim: String = "groups".into(),
        /// Share per app (the token's `azp`, else `client_id`); wins over groups.
        pub apps: BTreeMap<String, Share> = BTreeMap::new(),
        /// Share per group claim value; a caller in several gets the first class, then the
        /// heaviest weight.
        pub groups: BTreeMap<String, Share> = BTreeMap::new(),
    }
}

fn check_share(field: &str, s: &Share) -> Result<(), ConfigError> {
    refuse_if(
        s.weight == 0 || s.weight > MAX_WEIGHT,
        format!("{field}.weight"),
        format!("must be between 1 and {MAX_WEIGHT}"),
        "use a whole number, e.g. weight = 3 for three times the share of weight 1",
    )
}

/// The `[ratelimit.shares]` rules the types cannot express.
pub(super) fn validate(s: &SharesConfig) -> Result<(), ConfigError> {
    check_share("ratelimit.shares.default", &s.default)?;
    refuse_if(
        s.group_claim.trim().is_empty(),
        "ratelimit.shares.group_claim",
        "is empty",
        "name the JWT claim holding groups, e.g. \"groups\"",
    )?;
    for (name, share) in &s.apps {
        let field = format!("ratelimit.shares.apps.\"{name}\"");
        // A name as tokens carry it: the gateway keeps app names only when they are plain
        // (anything else is logged as `?`), so any other configured name could never match.
        refuse_if(
            !super::is_plain(name),
            &field,
            "is not a name a token can carry here (1-128 of A-Z a-z 0-9 . _ ~ : @ -)",
            "use the app's azp/client_id or the group exactly as the token has it",
        )?;
        refuse_if(
            name == OTHER_APP,
            &field,
            "is the metrics label of every unlisted app",
            "leave the app out (it gets the default share) or list it under its groups",
        )?;
        check_share(&field, share)?;
    }
    for (name, share) in &s.groups {
        let field = format!("ratelimit.shares.groups.\"{name}\"");
        refuse_if(
            name.is_empty(),
            &field,
            "is empty",
            "use the group exactly as the token's group claim has it",
        )?;
        check_share(&field, share)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<SharesConfig, String> {
        toml::from_str(toml_text).map_err(|e| e.message().to_string())
    }

    #[test]
    fn defaults_are_one_interactive_line_per_app_and_validate() {
        let s = SharesConfig::default();
        assert_eq!(s.default, Share::default());
        validate(&s).unwrap();
        let s = parse(
            r#"
default = { weight = 2, class = "batch" }
apps = { reception = { weight = 3 }, nightly-sync = { class = "batch" } }
groups = { front-desk = { weight = 5, class = "interactive" } }
"#,
        )
        .unwrap();
        validate(&s).unwrap();
        assert_eq!(s.apps["reception"].class, Class::Interactive);
        assert_eq!(s.apps["nightly-sync"].weight, 1);
        assert!(
            Class::Interactive < Class::Batch,
            "interactive is served first"
        );
    }

    #[test]
    fn bad_weights_classes_and_names_name_the_field_and_the_fix() {
        let err = parse(r#"apps = { x = { class = "urgent" } }"#).unwrap_err();
        assert!(err.contains("expected `interactive` or `batch`"), "{err}");
        let mut s = SharesConfig::default();
        s.apps.insert(
            "reception".into(),
            Share {
                weight: 0,
                class: Class::Batch,
            },
        );
        let e = validate(&s).unwrap_err();
        assert_eq!(e.field, "ratelimit.shares.apps.\"reception\".weight");
        assert!(e.fix.contains("weight = 3"), "{e}");
        let mut s = SharesConfig::default();
        s.default.weight = MAX_WEIGHT + 1;
        assert_eq!(
            validate(&s).unwrap_err().field,
            "ratelimit.shares.default.weight"
        );
        let mut s = SharesConfig::default();
        s.apps.insert("front desk".into(), Share::default());
        let e = validate(&s).unwrap_err();
        assert_eq!(e.field, "ratelimit.shares.apps.\"front desk\"");
        let s = SharesConfig {
            group_claim: " ".into(),
            ..SharesConfig::default()
        };
        assert_eq!(
            validate(&s).unwrap_err().field,
            "ratelimit.shares.group_claim"
        );
    }
}

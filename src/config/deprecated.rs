//! Renamed config fields: the old names still load, moved to the new ones before the file is
//! deserialised (so the environment overrides of either name work), each with a
//! [`Deprecated`] warning at start-up, on reload and from `check-config`. Setting both the old
//! and the new name of one field is refused.

use super::ConfigError;

/// A deprecated config field that was read and moved to its new name (a warning, not an
/// error: `thiserror` only writes its message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("`{old}` is deprecated and was read as `{new}`; rename it (the old name will go)")]
pub struct Deprecated {
    /// The old dotted name, e.g. `ratelimit.redis_url`.
    pub old: &'static str,
    /// Where it lives now, e.g. `redis.url`.
    pub new: &'static str,
}

/// (old dotted name, new dotted name).
const MOVED: [(&str, &str); 5] = [
    ("ratelimit.redis_url", "redis.url"),
    ("ratelimit.redis_timeout", "redis.timeout"),
    ("ratelimit.redis_failure", "redis.failure"),
    ("ratelimit.redis_prefix", "redis.prefix"),
    // Resends are not limits: they moved out of [ratelimit] with the retry policy.
    ("ratelimit.connect_retries", "upstream.retries.connect"),
];

/// Moves the old fields of the raw file (environment already overlaid) to their new names;
/// refuses a field set under both names, since which one wins would be a guess.
pub fn migrate_legacy(table: &mut toml::Table) -> Result<Vec<Deprecated>, ConfigError> {
    let mut moved = Vec::new();
    for (old, new) in MOVED {
        let (old_section, old_key) = old.rsplit_once('.').unwrap_or(("", old));
        // A value that is not a section is left for deserialising to report.
        let Some(value) = (old_section.split('.'))
            .try_fold(&mut *table, |t, seg| t.get_mut(seg)?.as_table_mut())
            .and_then(|s| s.remove(old_key))
        else {
            continue;
        };
        let (new_section, new_key) = new.rsplit_once('.').unwrap_or(("", new));
        let dest = section(table, new_section.split('.')).map_err(|_| {
            ConfigError::new(
                new_section,
                "is not a section",
                format!("write it as [{new_section}]"),
            )
        })?;
        super::validate::refuse_if(
            dest.contains_key(new_key),
            old,
            format!("is set and so is `{new}`"),
            format!("keep only `{new}` (`{old}` is the deprecated name)"),
        )?;
        dest.insert(new_key.to_string(), value);
        moved.push(Deprecated { old, new });
    }
    Ok(moved)
}

/// The section at `path`, created where missing (the environment overlay's too); `Err` names
/// the segment that holds a value rather than a section.
pub(super) fn section<'a, 'p>(
    mut t: &'a mut toml::Table,
    path: impl IntoIterator<Item = &'p str>,
) -> Result<&'a mut toml::Table, &'p str> {
    for seg in path {
        t = (t.entry(seg))
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or(seg)?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn old_fields_move_to_their_new_names_with_a_warning() {
        let mut t = table(
            "[ratelimit]\nredis_url = \"redis://r:6379\"\nredis_failure = \"closed\"\nreplicas = 2\nconnect_retries = 4\n[upstream]\nuser_agent = \"A (a@b.c)\"\n",
        );
        let moved = migrate_legacy(&mut t).unwrap();
        assert_eq!(
            moved.iter().map(|d| d.old).collect::<Vec<_>>(),
            [
                "ratelimit.redis_url",
                "ratelimit.redis_failure",
                "ratelimit.connect_retries"
            ]
        );
        assert!(moved[0].to_string().contains("`redis.url`"));
        assert_eq!(t["redis"]["url"].as_str(), Some("redis://r:6379"));
        assert_eq!(t["redis"]["failure"].as_str(), Some("closed"));
        assert_eq!(t["upstream"]["retries"]["connect"].as_integer(), Some(4));
        assert_eq!(t["upstream"]["user_agent"].as_str(), Some("A (a@b.c)"));
        let left = t["ratelimit"].as_table().unwrap();
        assert!(!left.contains_key("redis_url") && !left.contains_key("connect_retries"));
        assert_eq!(t["ratelimit"]["replicas"].as_integer(), Some(2));
        let mut fresh =
            table("[redis]\nurl = \"redis://r:6379\"\n[upstream.retries]\nconnect = 1\n");
        assert!(migrate_legacy(&mut fresh).unwrap().is_empty());
    }

    #[test]
    fn the_same_field_under_both_names_is_refused_naming_both() {
        let mut t = table("[ratelimit]\nredis_prefix = \"a\"\n[redis]\nprefix = \"b\"\n");
        let e = migrate_legacy(&mut t).unwrap_err();
        assert_eq!(e.field, "ratelimit.redis_prefix");
        assert!(e.to_string().contains("`redis.prefix`"), "{e}");
        let mut t = table("[ratelimit]\nconnect_retries = 1\n[upstream.retries]\nconnect = 3\n");
        let e = migrate_legacy(&mut t).unwrap_err();
        assert_eq!(e.field, "ratelimit.connect_retries");
        assert!(e.to_string().contains("`upstream.retries.connect`"), "{e}");
    }
}

//! Each sandbox account's Cliniko data, seeded deterministically and kept in memory.
//!
//! Ids are large 64-bit integers written as JSON strings, names carry the account label, every
//! record has an absolute `links.self` on the sandbox's base URL, and `telehealth_url` /
//! `cancellation_url` point at `https://<label>.cliniko.com` (the gateway must leave those alone).
//! Writes change the store, so a later GET by the same account sees them.

use super::Account;
use super::sync::lock;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Mutex;

/// The resources the sandbox serves (list, show, create, update, archive).
pub(crate) const RESOURCES: &[&str] = &[
    "patients",
    "appointments",
    "individual_appointments",
    "practitioners",
    "businesses",
    "appointment_types",
];

/// Seeded patients per account (a list has 3 pages at the default `per_page` of 50).
pub const SEEDED_PATIENTS: u64 = 120;
const PRACTITIONERS: u64 = 3;
const APPOINTMENT_TYPES: u64 = 3;
const APPOINTMENTS: u64 = 60;

const PATIENT_BASE: u64 = 836447129235883061;
const PRACTITIONER_BASE: u64 = 736447129235883061;
const BUSINESS_BASE: u64 = 636447129235883061;
const TYPE_BASE: u64 = 536447129235883061;
const APPOINTMENT_BASE: u64 = 436447129235883061;
const USER_BASE: u64 = 336447129235883061;
/// Created records get ids from here on, far from the seeded ones.
const CREATED_OFFSET: u64 = 500_000;

/// Id of the `n`th (1-based) seeded appointment of account `account` (0-based).
pub fn seeded_appointment_id(account: usize, n: u64) -> String {
    (APPOINTMENT_BASE + account as u64 * 1_000_000 + n).to_string()
}

/// Id of the `n`th (1-based) seeded patient of account `account` (0-based).
pub fn seeded_patient_id(account: usize, n: u64) -> String {
    (PATIENT_BASE + account as u64 * 1_000_000 + n).to_string()
}

/// A validation failure, already shaped like Cliniko's 422 body.
pub(crate) struct Invalid(pub(crate) Value);

/// One account: its key (full and without shard suffix), its owner and its records.
pub(crate) struct AccountStore {
    pub(crate) api_key: String,
    pub(crate) key_body: Option<String>,
    pub(crate) user: Value,
    base_url: String,
    offset: u64,
    records: Mutex<Records>,
}

struct Records {
    by_resource: HashMap<&'static str, Vec<Value>>,
    next_id: u64,
}

fn self_link(base: &str, res: &str, id: u64) -> Value {
    json!({"links": {"self": format!("{base}/{res}/{id}")}})
}

fn day(n: u64) -> String {
    format!("2024-{:02}-{:02}", n % 12 + 1, n % 28 + 1)
}

impl AccountStore {
    /// Builds account number `index`'s data; ids differ between accounts.
    pub(crate) fn seed(index: usize, account: &Account, base: &str, shard: &str) -> AccountStore {
        let offset = index as u64 * 1_000_000;
        let label = account.label.as_str();
        let key_body = account
            .api_key
            .rsplit_once('-')
            .and_then(|(body, sfx)| crate::config::is_shard_name(sfx).then(|| body.to_string()));
        let mut by_resource: HashMap<&'static str, Vec<Value>> = HashMap::new();
        let user_id = USER_BASE + index as u64;
        let patients = (1..=SEEDED_PATIENTS).map(|n| {
            let id = PATIENT_BASE + offset + n;
            json!({
                "id": id.to_string(),
                "first_name": format!("Ada-{label}-{n}"),
                "last_name": format!("Lovelace-{label}"),
                "date_of_birth": format!("19{:02}-{}", 40 + n % 60, &day(n)[5..]),
                "email": format!("ada{n}@{label}.example"),
                "notes": format!("sandbox patient on shard {shard}"),
                "telehealth_url": format!("https://{label}.cliniko.com/telehealth/patients/{id}"),
                "created_at": format!("{}T03:45:00Z", day(n)),
                "updated_at": format!("{}T03:45:00Z", day(n + 1)),
                "archived_at": null,
                "appointments": {"links": {"self": format!("{base}/patients/{id}/appointments")}},
                "links": {"self": format!("{base}/patients/{id}")},
            })
        });
        by_resource.insert("patients", patients.collect());
        let practitioners = (1..=PRACTITIONERS).map(|n| {
            let id = PRACTITIONER_BASE + offset + n;
            json!({
                "id": id.to_string(),
                "first_name": format!("Prac-{label}-{n}"),
                "last_name": format!("Healer-{label}"),
                "title": "Dr",
                "active": true,
                "user": self_link(base, "users", user_id),
                "links": {"self": format!("{base}/practitioners/{id}")},
            })
        });
        by_resource.insert("practitioners", practitioners.collect());
        let business_id = BUSINESS_BASE + offset + 1;
        by_resource.insert(
            "businesses",
            vec![json!({
                "id": business_id.to_string(),
                "business_name": format!("{label} Clinic"),
                "time_zone": "Australia/Melbourne",
                "links": {"self": format!("{base}/businesses/{business_id}")},
            })],
        );
        let types = (1..=APPOINTMENT_TYPES).map(|n| {
            let id = TYPE_BASE + offset + n;
            json!({
                "id": id.to_string(),
                "name": format!("Consult {n} ({label})"),
                "duration_in_minutes": 15 * (n + 1),
                "links": {"self": format!("{base}/appointment_types/{id}")},
            })
        });
        by_resource.insert("appointment_types", types.collect());
        for res in ["individual_appointments", "appointments"] {
            let appts = (1..=APPOINTMENTS).map(|n| {
                let id = APPOINTMENT_BASE + offset + n;
                let (d, h) = (day(n), 8 + n % 9);
                json!({
                    "id": id.to_string(),
                    "starts_at": format!("{d}T{h:02}:00:00Z"),
                    "ends_at": format!("{d}T{h:02}:30:00Z"),
                    "notes": format!("Visit {n} for {label}"),
                    "telehealth_url": format!("https://{label}.cliniko.com/telehealth/{id}"),
                    "cancellation_url": format!("https://{label}.cliniko.com/bookings/cancel/{id}"),
                    "patient": self_link(base, "patients", PATIENT_BASE + offset + n),
                    "practitioner": self_link(base, "practitioners",
                        PRACTITIONER_BASE + offset + n % PRACTITIONERS + 1),
                    "business": self_link(base, "businesses", business_id),
                    "appointment_type": self_link(base, "appointment_types",
                        TYPE_BASE + offset + n % APPOINTMENT_TYPES + 1),
                    "archived_at": null,
                    "links": {"self": format!("{base}/{res}/{id}")},
                })
            });
            by_resource.insert(res, appts.collect());
        }
        AccountStore {
            api_key: account.api_key.clone(),
            key_body,
            user: json!({
                "id": user_id.to_string(),
                "first_name": label,
                "last_name": "Owner",
                "email": format!("owner@{label}.example"),
                "role": "administrator",
                "links": {"self": format!("{base}/users/{user_id}")},
            }),
            base_url: base.to_string(),
            offset,
            records: Mutex::new(Records {
                by_resource,
                next_id: 1,
            }),
        }
    }

    /// Whether a Basic-auth username is this account's key, with or without its shard suffix.
    pub(crate) fn accepts(&self, username: &str) -> bool {
        username == self.api_key || self.key_body.as_deref() == Some(username)
    }

    /// One page of a resource's unarchived records and their total count.
    pub(crate) fn list(&self, res: &str, page: usize, per_page: usize) -> (Vec<Value>, usize) {
        let recs = lock(&self.records);
        let live: Vec<&Value> = recs
            .by_resource
            .get(res)
            .map(|v| v.iter().filter(|r| r["archived_at"].is_null()).collect())
            .unwrap_or_default();
        let start = (page - 1).saturating_mul(per_page);
        let items = live
            .iter()
            .skip(start)
            .take(per_page)
            .map(|v| (*v).clone())
            .collect();
        (items, live.len())
    }

    /// One record by id (archived ones included, as Cliniko does).
    pub(crate) fn get(&self, res: &str, id: &str) -> Option<Value> {
        let recs = lock(&self.records);
        find(&recs, res, id).cloned()
    }

    /// Creates a record; patients need a non-blank `first_name`.
    pub(crate) fn create(&self, res: &str, body: &[u8]) -> Result<(String, Value), Invalid> {
        let fields = parse_object(body).ok_or_else(|| invalid_for(res))?;
        if res == "patients" && !has_text(&fields, "first_name") {
            return Err(invalid_for(res));
        }
        let mut recs = lock(&self.records);
        let id = PATIENT_BASE + self.offset + CREATED_OFFSET + recs.next_id;
        recs.next_id += 1;
        let id_s = id.to_string();
        let mut rec = fields;
        rec.insert("id".into(), json!(id_s));
        rec.insert("created_at".into(), json!("2025-01-01T00:00:00Z"));
        rec.insert("updated_at".into(), json!("2025-01-01T00:00:00Z"));
        rec.insert("archived_at".into(), Value::Null);
        rec.insert(
            "links".into(),
            json!({"self": format!("{}/{res}/{id_s}", self.base_url)}),
        );
        let rec = Value::Object(rec);
        let list = recs
            .by_resource
            .get_mut(res)
            .ok_or_else(|| invalid_for(res))?;
        list.push(rec.clone());
        Ok((id_s, rec))
    }

    /// Merges the body's fields into a record; `None` if there is no such record.
    pub(crate) fn update(
        &self,
        res: &str,
        id: &str,
        body: &[u8],
    ) -> Option<Result<Value, Invalid>> {
        let mut recs = lock(&self.records);
        let rec = find_mut(&mut recs, res, id)?;
        let Some(fields) = parse_object(body) else {
            return Some(Err(invalid_for(res)));
        };
        if let Value::Object(obj) = rec {
            for (k, v) in fields {
                if k != "id" && k != "links" {
                    obj.insert(k, v);
                }
            }
            obj.insert("updated_at".into(), json!("2025-01-02T00:00:00Z"));
        }
        Some(Ok(rec.clone()))
    }

    /// Sets or clears `archived_at` (also used for cancel); false if there is no such record.
    pub(crate) fn set_archived(&self, res: &str, id: &str, archived: bool) -> bool {
        let mut recs = lock(&self.records);
        match find_mut(&mut recs, res, id) {
            Some(rec) => {
                rec["archived_at"] = if archived {
                    json!("2025-01-03T00:00:00Z")
                } else {
                    Value::Null
                };
                true
            }
            None => false,
        }
    }

    /// Removes a record; false if there is no such record.
    pub(crate) fn delete(&self, res: &str, id: &str) -> bool {
        let mut recs = lock(&self.records);
        let Some(list) = recs.by_resource.get_mut(res) else {
            return false;
        };
        let before = list.len();
        list.retain(|r| r["id"].as_str() != Some(id));
        list.len() != before
    }
}

fn find<'a>(recs: &'a Records, res: &str, id: &str) -> Option<&'a Value> {
    recs.by_resource
        .get(res)?
        .iter()
        .find(|r| r["id"].as_str() == Some(id))
}

fn find_mut<'a>(recs: &'a mut Records, res: &str, id: &str) -> Option<&'a mut Value> {
    recs.by_resource
        .get_mut(res)?
        .iter_mut()
        .find(|r| r["id"].as_str() == Some(id))
}

fn parse_object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

fn has_text(fields: &Map<String, Value>, key: &str) -> bool {
    fields
        .get(key)
        .and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty())
}

fn invalid_for(res: &str) -> Invalid {
    if res == "patients" {
        Invalid(json!({"errors": {"first_name": ["can't be blank"]}}))
    } else {
        Invalid(json!({"errors": {"base": ["is invalid"]}}))
    }
}

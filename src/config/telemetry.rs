//! The `[telemetry]` section (OpenTelemetry trace export) and its validation.

use super::ConfigError;
use super::validate::{carries_secrets, refuse_if};
use serde::{Deserialize, Serialize};

settings! {
    /// OpenTelemetry: one server span per request, a client span per Cliniko call, exported
    /// over OTLP/HTTP (protobuf). Setting `otlp_endpoint` is the one switch that turns it on.
    #[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    pub struct TelemetryConfig {
        /// Collector base URL, e.g. `http://127.0.0.1:4318` (spans go to `<it>/v1/traces`).
        pub otlp_endpoint: Option<String> = None,
        /// `service.name` of the exported spans.
        pub service_name: String = "cliniko-gateway".into(),
        /// Share of traces kept (0..=1), decided by trace id (a caller's sampled flag is not
        /// trusted).
        pub sample_ratio: f64 = 1.0,
    }
}

/// The `[telemetry]` rules the types cannot express.
pub(super) fn validate(t: &TelemetryConfig) -> Result<(), ConfigError> {
    refuse_if(
        !(0.0..=1.0).contains(&t.sample_ratio),
        "telemetry.sample_ratio",
        "must be between 0 and 1",
        "use e.g. 1.0 (keep every trace) or 0.1 (keep one in ten)",
    )?;
    refuse_if(
        t.service_name.trim().is_empty(),
        "telemetry.service_name",
        "is empty",
        "name the service, e.g. \"cliniko-gateway\"",
    )?;
    let Some(url) = &t.otlp_endpoint else {
        return Ok(());
    };
    refuse_if(
        !cfg!(feature = "otel"),
        "telemetry.otlp_endpoint",
        "this binary was built without OpenTelemetry support",
        "rebuild with `--features otel` (a default feature), or unset telemetry.otlp_endpoint",
    )?;
    let uri: http::Uri = url.parse().map_err(|_| {
        ConfigError::new(
            "telemetry.otlp_endpoint",
            "not a valid URL",
            "write the collector's OTLP/HTTP base URL, e.g. http://127.0.0.1:4318",
        )
    })?;
    refuse_if(
        !matches!(uri.scheme_str(), Some("http" | "https"))
            || uri.authority().is_none()
            || carries_secrets(&uri),
        "telemetry.otlp_endpoint",
        "must be an absolute http:// or https:// URL without credentials or a query (it is printed by check-config)",
        "write the collector's OTLP/HTTP base URL, e.g. http://127.0.0.1:4318",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry(endpoint: Option<&str>, ratio: f64) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: endpoint.map(String::from),
            sample_ratio: ratio,
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn telemetry_off_by_default_and_valid() {
        let t = TelemetryConfig::default();
        assert!(t.otlp_endpoint.is_none());
        assert!(validate(&t).is_ok());
    }

    #[test]
    fn telemetry_sample_ratio_must_be_a_share() {
        for bad in [-0.1, 1.5, f64::NAN] {
            let e = validate(&telemetry(None, bad)).unwrap_err().to_string();
            assert!(e.contains("telemetry.sample_ratio"), "{e}");
        }
        for ok in [0.0, 0.25, 1.0] {
            assert!(validate(&telemetry(None, ok)).is_ok(), "{ok}");
        }
    }

    #[cfg(feature = "otel")]
    #[test]
    fn telemetry_endpoint_must_be_an_http_url() {
        for bad in [
            "127.0.0.1:4318",
            "not a url",
            "ftp://collector:4318",
            "http://collector:4318/?token=x",
            "https://user:token=x@collector:4318",
            "/v1/traces",
        ] {
            let e = validate(&telemetry(Some(bad), 1.0))
                .unwrap_err()
                .to_string();
            assert!(e.contains("telemetry.otlp_endpoint"), "{bad}: {e}");
            assert!(!e.contains("token=x"), "the value is not echoed: {e}");
        }
        for ok in ["http://127.0.0.1:4318", "https://otel.internal/otlp"] {
            assert!(validate(&telemetry(Some(ok), 1.0)).is_ok(), "{ok}");
        }
    }

    #[cfg(not(feature = "otel"))]
    #[test]
    fn telemetry_endpoint_needs_the_feature() {
        let e = validate(&telemetry(Some("http://127.0.0.1:4318"), 1.0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--features otel"), "{e}");
    }
}

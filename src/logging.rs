//! Logging set-up, shared by `serve` and the tools.

use crate::config::LogFormat;

/// Installs the tracing subscriber (`RUST_LOG` wins over the configured level).
pub fn init(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    let text = match format {
        LogFormat::Text => true,
        LogFormat::Json => false,
        LogFormat::Auto => std::io::IsTerminal::is_terminal(&std::io::stdout()),
    };
    let _ = if text {
        b.try_init()
    } else {
        b.json().flatten_event(true).try_init()
    };
}

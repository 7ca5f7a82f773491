//! `hookbridge asyncapi`: print the AsyncAPI document of what this configuration publishes.

use std::path::PathBuf;

use crate::config::Config;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
    Markdown,
}

/// Reads no secret file and no certificate: the document needs each endpoint's routing and the
/// sink only.
pub fn asyncapi(file: Option<PathBuf>, format: Format) -> anyhow::Result<()> {
    let config = Config::load(file.as_deref())?;
    config.validate()?;
    let out = match format {
        Format::Markdown => crate::asyncapi::markdown(&config)?,
        Format::Json => serde_json::to_string_pretty(&crate::asyncapi::document(&config)?)? + "\n",
        Format::Yaml => crate::asyncapi::to_yaml(&crate::asyncapi::document(&config)?),
    };
    print!("{out}");
    Ok(())
}

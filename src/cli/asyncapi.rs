//! `hookbridge asyncapi`: print the AsyncAPI document of what this configuration publishes.

use std::path::PathBuf;

use crate::config::Config;
use crate::routing::Router;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
    Markdown,
}

/// Reads no secret file and no certificate: the document needs the routing and the sink only.
pub fn asyncapi(file: Option<PathBuf>, format: Format) -> anyhow::Result<()> {
    let config = Config::load(file.as_deref())?;
    config.validate()?;
    let router = Router::from_config(&config.routing)?;
    let out = match format {
        Format::Markdown => crate::asyncapi::markdown(&router),
        Format::Json => {
            let doc = crate::asyncapi::document(&config, &router);
            serde_json::to_string_pretty(&doc)? + "\n"
        }
        Format::Yaml => crate::asyncapi::to_yaml(&crate::asyncapi::document(&config, &router)),
    };
    print!("{out}");
    Ok(())
}

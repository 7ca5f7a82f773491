//! hookbridge: durable webhook ingress for Sessionboard.
//!
//! A delivery is authenticated, made durable in the local write-ahead [`spool`], acknowledged,
//! and then republished by the [`forward`]er onto a [`sink`] (NATS or Kafka). See
//! `ARCHITECTURE.md` for the invariants and a map of the code.

pub mod admin;
pub mod app;
pub mod asyncapi;
pub mod cli;
pub mod clock;
pub mod cloudevents;
pub mod config;
pub mod deadletter;
pub mod dedup;
pub mod delivery;
pub mod endpoint;
pub mod forward;
pub mod ingress;
pub mod metrics;
pub mod repair;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod tls;

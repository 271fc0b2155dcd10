//! rbee-hive: the per-machine server that owns the worker catalog and the worker processes.
//!
//! Domain modules ([`catalog`], [`process`], [`jobs`], [`host`]) know nothing of gRPC;
//! [`service`] translates requests into calls on them, and [`error`] chooses status codes.

pub mod catalog;
pub mod error;
pub mod health;
pub mod host;
pub mod jobs;
pub mod models;
pub mod process;
pub mod provision;
pub mod security;
pub mod server;
pub mod service;
pub mod workers;

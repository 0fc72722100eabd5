//! Herald's shared library.
//!
//! The core (`model`, `clock`, `recipient`, `render`, `drain`, `receipt`, `workflow`,
//! `steps`, `flow`) knows no AWS or
//! Postgres types: it works through the narrow traits in `model`. The adapters implement
//! those traits: `pg` over tokio-postgres, `aws` over the AWS SDK, `webhook` over reqwest. `config` reads the
//! functions' environment.

pub mod aws;
pub mod clock;
pub mod config;
pub mod drain;
pub mod flow;
pub mod model;
pub mod pg;
pub mod receipt;
pub mod recipient;
pub mod render;
pub mod steps;
pub mod webhook;
pub mod workflow;

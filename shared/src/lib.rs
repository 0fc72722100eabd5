//! Herald's shared library.
//!
//! The core (`model`, `clock`, `recipient`, `metrics`, `render`, `receipt`, `workflow`,
//! `steps`, `ledger`, `drain`, `flow`) knows no AWS or Postgres types: it works through the
//! narrow traits of `model`, `receipt` and `ledger`. The adapters implement those traits: `pg`
//! over tokio-postgres, `aws` over the AWS SDK, `webhook` over reqwest. `config` reads the
//! functions' environment.
//!
//! Imports point down these layers, never up:
//!
//! 1. `drain` (the scheduler's loop), `flow` (the executor's), `config`;
//! 2. `ledger`, `steps`, `workflow`, `pg`, `aws`, `webhook`;
//! 3. `render`, `receipt`;
//! 4. `model`, `recipient`, `clock`, `metrics`.

pub mod aws;
pub mod clock;
pub mod config;
pub mod drain;
pub mod flow;
pub mod ledger;
pub mod metrics;
pub mod model;
pub mod pg;
pub mod receipt;
pub mod recipient;
pub(crate) mod render;
pub mod steps;
pub mod webhook;
pub mod workflow;

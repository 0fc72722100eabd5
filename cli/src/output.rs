//! What the command prints: tables (bordered on a terminal, plain columns otherwise) or,
//! with `--json`, one JSON document per command.

use std::io::Write;

use comfy_table::{presets, ContentArrangement, Table};

use crate::Failure;

/// Where a command prints, and how.
pub struct Out<W: Write> {
    w: W,
    pub json: bool,
    terminal: bool,
}

impl<W: Write> Out<W> {
    pub fn new(w: W, json: bool, terminal: bool) -> Self {
        Self { w, json, terminal }
    }

    /// A line of text (ignored under `--json`, where only the document is printed).
    pub fn line(&mut self, text: impl AsRef<str>) -> Result<(), Failure> {
        if self.json {
            return Ok(());
        }
        writeln!(self.w, "{}", text.as_ref()).map_err(io)
    }

    /// The command's JSON document (only under `--json`).
    pub fn document(&mut self, value: &serde_json::Value) -> Result<(), Failure> {
        if !self.json {
            return Ok(());
        }
        serde_json::to_writer_pretty(&mut self.w, value).map_err(|e| Failure::Error(e.to_string()))?;
        writeln!(self.w).map_err(io)
    }

    /// One JSON value per line (`--json` with `logs --follow`).
    pub fn json_line(&mut self, value: &serde_json::Value) -> Result<(), Failure> {
        serde_json::to_writer(&mut self.w, value).map_err(|e| Failure::Error(e.to_string()))?;
        writeln!(self.w).map_err(io)?;
        self.w.flush().map_err(io)
    }

    /// A table of text cells under a header row (ignored under `--json`).
    pub fn table(&mut self, header: &[&str], rows: Vec<Vec<String>>) -> Result<(), Failure> {
        if self.json {
            return Ok(());
        }
        let mut t = Table::new();
        t.load_preset(if self.terminal {
            presets::UTF8_FULL_CONDENSED
        } else {
            presets::NOTHING
        });
        t.set_content_arrangement(ContentArrangement::Disabled);
        t.set_header(header.iter().map(|h| h.to_string()));
        for r in rows {
            t.add_row(r);
        }
        writeln!(self.w, "{}", t.to_string().trim_end()).map_err(io)
    }

    /// Raw text, as it is (a document printed by `get`).
    pub fn raw(&mut self, text: &str) -> Result<(), Failure> {
        self.w.write_all(text.as_bytes()).map_err(io)?;
        self.w.flush().map_err(io)
    }

    pub fn flush(&mut self) -> Result<(), Failure> {
        self.w.flush().map_err(io)
    }
}

fn io(e: std::io::Error) -> Failure {
    Failure::Error(format!("writing output: {e}"))
}

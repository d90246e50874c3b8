//! Prompt ensembles (paper §6): a name → N member tasks and how their answers combine, and
//! their stored form `<name>.ensemble.json` beside the prompts (the catalog that serves them is
//! `catalog/ensembles.rs`). Members are task names, checked against the served prompts
//! when an ensemble is written and again on every request.
use std::fs;
use std::io;

use serde::{Deserialize, Serialize};

use super::name::TaskName;
use super::store::sha256_hex;

/// File name suffix of a stored ensemble.
pub const SUFFIX: &str = ".ensemble.json";

/// Largest ensemble file read from the folder.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// How an ensemble turns its members' answers into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Combine {
    /// Majority of the members' answers; ties go to the answer with the highest summed
    /// log-probability.
    Vote,
    /// With `labels`: each label's log-probability averaged over the members, highest wins.
    MeanLogprob,
}

impl Combine {
    /// The name used in requests and files.
    pub fn as_str(self) -> &'static str {
        match self {
            Combine::Vote => "vote",
            Combine::MeanLogprob => "mean-logprob",
        }
    }
}

/// What an ensemble is: its member tasks, in order, and the combine rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnsembleSpec {
    /// Member task names (distinct).
    pub members: Vec<String>,
    /// How answers combine.
    pub combine: Combine,
}

impl EnsembleSpec {
    /// SHA-256 of the spec's canonical JSON (the same members and rule hash the same).
    pub fn sha256(&self) -> String {
        sha256_hex(&serde_json::to_vec(self).unwrap_or_default())
    }
}

/// What clients see about an ensemble.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EnsembleInfo {
    /// Ensemble name.
    pub name: String,
    /// Member tasks, in order.
    pub members: Vec<String>,
    /// `vote` or `mean-logprob`.
    pub combine: Combine,
    /// 1 for the first write, +1 per replacement (kept in the file).
    pub version: u64,
    /// SHA-256 of the members and rule as stored.
    pub sha256: String,
    /// When this version was loaded, seconds since the Unix epoch.
    pub loaded_at: u64,
}

/// The stored form.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredEnsemble {
    /// Member task names.
    pub members: Vec<String>,
    /// How answers combine.
    pub combine: Combine,
    /// Its version.
    pub version: u64,
}

impl StoredEnsemble {
    /// The stored form's bytes.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).map_err(io::Error::other)
    }

    /// Reads one ensemble file: bounded, parsed (never executed), member names checked.
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let meta = fs::metadata(path).map_err(|e| e.to_string())?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(format!(
                "{} bytes; an ensemble file may have {MAX_FILE_BYTES}",
                meta.len()
            ));
        }
        let bytes = fs::read(path).map_err(|e| e.to_string())?;
        Self::parse(&bytes)
    }

    /// Parses an ensemble's stored bytes (never executed), member names checked.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(format!(
                "{} bytes; an ensemble file may have {MAX_FILE_BYTES}",
                bytes.len()
            ));
        }
        let stored: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        for m in &stored.members {
            TaskName::parse(m).map_err(|e| format!("member: {e}"))?;
        }
        if stored.members.is_empty() {
            return Err("no members".into());
        }
        Ok(stored)
    }
}

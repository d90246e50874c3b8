//! Tenants: who is calling (API keys), what they may touch (task name patterns), and how much
//! (quotas, batch share). Read from `--tenants FILE` (TOML, or JSON by extension) and reloaded
//! when the file changes or on SIGHUP; without a file the server runs open.
pub mod quota;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::prompts::TaskName;
pub use quota::QuotaConfig;
use quota::{Limiter, Limits};

/// Errors in a tenants file; each names the tenant and the field.
#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    /// Reading the file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("{path}: {why}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The file parses but is inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// One tenant as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Unique name (used in logs, the audit log and metric labels).
    pub name: String,
    /// Manages every task and reads /metrics.
    #[serde(default)]
    pub admin: bool,
    /// SHA-256 (hex) of each API key; `promptd hash-key` prints it. Several allow rotation.
    pub key_sha256: Vec<String>,
    /// Task name patterns the tenant owns (`*` any run, `?` one character), e.g. `acme.*`.
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Patterns of owned tasks that every tenant may predict with (and see).
    #[serde(default)]
    pub public: Vec<String>,
    /// Share of batch slots relative to other tenants with rows waiting (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Quotas.
    #[serde(default)]
    pub quotas: QuotaConfig,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    tenants: Vec<TenantConfig>,
}

/// A task-name pattern: `*` matches any run of characters, `?` exactly one.
#[derive(Debug, Clone)]
pub struct Pattern(String);

impl Pattern {
    fn parse(p: &str) -> Result<Self, String> {
        let ok = !p.is_empty()
            && p.len() <= TaskName::MAX_LEN
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-*?".contains(&b));
        if ok {
            Ok(Pattern(p.to_string()))
        } else {
            Err(format!(
                "pattern {p:?}: use task-name characters [A-Za-z0-9._-] plus `*` and `?`"
            ))
        }
    }

    /// Whether `task` matches.
    pub fn matches(&self, task: &str) -> bool {
        glob(self.0.as_bytes(), task.as_bytes())
    }
}

/// Iterative glob matching with backtracking to the last `*` (linear in practice).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A loaded tenant.
#[derive(Debug)]
pub struct Tenant {
    /// Name.
    pub name: String,
    /// Admin role.
    pub admin: bool,
    keys: Vec<[u8; 32]>,
    tasks: Vec<Pattern>,
    public: Vec<Pattern>,
    /// Batch share.
    pub weight: u32,
    /// Prompts the tenant may own.
    pub max_prompts: usize,
    /// Longest prompt the tenant may upload.
    pub max_prompt_length: usize,
    /// Rate and concurrency state (kept across reloads).
    pub limiter: Arc<Limiter>,
}

impl Tenant {
    /// Whether the tenant's patterns cover `task`.
    pub fn owns_pattern(&self, task: &str) -> bool {
        self.tasks.iter().any(|p| p.matches(task))
    }

    fn publishes(&self, task: &str) -> bool {
        self.public.iter().any(|p| p.matches(task))
    }
}

/// The tenants of one version of the file.
#[derive(Debug, Default)]
pub struct TenantSet {
    tenants: Vec<Arc<Tenant>>,
}

impl TenantSet {
    /// The tenant owning `task`: the first, in file order, whose patterns match.
    pub fn owner(&self, task: &str) -> Option<&Arc<Tenant>> {
        self.tenants.iter().find(|t| t.owns_pattern(task))
    }

    /// Tenant names, in file order.
    pub fn names(&self) -> Vec<String> {
        self.tenants.iter().map(|t| t.name.clone()).collect()
    }

    /// The tenant holding a key whose SHA-256 is `digest`; every stored key is compared, in
    /// constant time, whatever matches.
    fn by_key(&self, digest: &[u8; 32]) -> Option<Arc<Tenant>> {
        let mut found = None;
        for t in &self.tenants {
            for k in &t.keys {
                if ct_eq(k, digest) {
                    found = Some(t.clone());
                }
            }
        }
        found
    }
}

/// Constant-time equality of two digests.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// SHA-256 of an API key, hex: what a tenants file stores.
pub fn hash_key(key: &str) -> String {
    crate::prompts::store::sha256_hex(key.as_bytes())
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No tenants file: everyone may do everything.
    Open,
    /// An authenticated tenant (admin or not).
    Tenant(Arc<Tenant>),
}

impl Caller {
    /// The tenant name for logs, audit and metrics (`-` when open).
    pub fn name(&self) -> &str {
        match self {
            Caller::Open => "-",
            Caller::Tenant(t) => &t.name,
        }
    }

    /// Whether the caller is unrestricted (open server or admin).
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Open => true,
            Caller::Tenant(t) => t.admin,
        }
    }

    /// Whether the caller may create, replace or delete `task`.
    pub fn may_write(&self, set: &TenantSet, task: &str) -> bool {
        match self {
            Caller::Open => true,
            Caller::Tenant(t) if t.admin => true,
            Caller::Tenant(t) => set.owner(task).is_some_and(|o| Arc::ptr_eq(o, t)),
        }
    }

    /// Whether the caller may predict with and see `task`: its own, or published by its owner.
    pub fn may_read(&self, set: &TenantSet, task: &str) -> bool {
        self.may_write(set, task) || set.owner(task).is_some_and(|o| o.publishes(task))
    }
}

/// The live tenants, swapped whole on reload.
pub struct Tenants {
    path: Option<PathBuf>,
    max_prompt_length: usize,
    current: RwLock<Arc<TenantSet>>,
    limiters: parking_lot::Mutex<std::collections::HashMap<String, Arc<Limiter>>>,
    seen: parking_lot::Mutex<Option<Vec<u8>>>,
    remote: bool,
}

impl Tenants {
    /// No tenants file: an open server.
    pub fn open() -> Self {
        Self {
            path: None,
            max_prompt_length: usize::MAX,
            current: RwLock::new(Arc::new(TenantSet::default())),
            limiters: parking_lot::Mutex::new(std::collections::HashMap::new()),
            seen: parking_lot::Mutex::new(None),
            remote: false,
        }
    }

    /// Loads `path`; `max_prompt_length` caps every tenant's prompt length.
    pub fn load(path: &Path, max_prompt_length: usize) -> Result<Self, TenantsError> {
        let tenants = Self {
            path: Some(path.to_path_buf()),
            max_prompt_length,
            ..Self::open()
        };
        tenants.reload()?;
        Ok(tenants)
    }

    /// Tenants read from `bytes` (a file kept elsewhere, as an object store's object named
    /// `name`); later versions come through [`Tenants::apply`].
    pub fn from_bytes(
        name: &str,
        bytes: Vec<u8>,
        max_prompt_length: usize,
    ) -> Result<Self, TenantsError> {
        let tenants = Self {
            path: Some(PathBuf::from(name)),
            max_prompt_length,
            remote: true,
            ..Self::open()
        };
        tenants.apply(bytes)?;
        Ok(tenants)
    }

    /// Whether a tenants file is in force.
    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Whether the file is kept elsewhere (read by the caller, given to [`Tenants::apply`]).
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// The tenants now in force.
    pub fn current(&self) -> Arc<TenantSet> {
        self.current.read().clone()
    }

    /// Re-reads the file if its bytes changed. Ok(true) when a new version took effect; on an
    /// error the previous tenants stay in force.
    pub fn reload(&self) -> Result<bool, TenantsError> {
        let Some(path) = self.path.as_ref().filter(|_| !self.remote) else {
            return Ok(false);
        };
        let bytes = std::fs::read(path).map_err(|source| TenantsError::Io {
            path: path.clone(),
            source,
        })?;
        self.apply(bytes)
    }

    /// Takes `bytes` as the tenants file's content now: Ok(true) when they changed and took
    /// effect; on an error the previous tenants stay in force.
    pub fn apply(&self, bytes: Vec<u8>) -> Result<bool, TenantsError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        if self.seen.lock().as_deref() == Some(bytes.as_slice()) {
            return Ok(false);
        }
        // Remembered even when invalid, so a bad version is reported once, not every poll.
        let parsed = self.parse(path, &bytes);
        *self.seen.lock() = Some(bytes);
        *self.current.write() = Arc::new(parsed?);
        Ok(true)
    }

    fn parse(&self, path: &Path, bytes: &[u8]) -> Result<TenantSet, TenantsError> {
        let parse_err = |why: String| TenantsError::Parse {
            path: path.to_path_buf(),
            why,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| parse_err(e.to_string()))?;
        let file: TenantsFile = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(text).map_err(|e| parse_err(e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| parse_err(e.to_string()))?
        };
        let invalid = TenantsError::Invalid;
        let (mut names, mut keys) = (HashSet::new(), HashSet::new());
        let mut tenants = Vec::with_capacity(file.tenants.len());
        for t in file.tenants {
            let at = format!("{}: tenant {:?}", path.display(), t.name);
            if t.name.is_empty() || t.name.len() > 64 || !names.insert(t.name.clone()) {
                return Err(invalid(format!(
                    "{at}: names must be unique, 1 to 64 bytes"
                )));
            }
            if t.key_sha256.is_empty() {
                return Err(invalid(format!("{at}: needs at least one key_sha256")));
            }
            let mut digests = Vec::new();
            for k in &t.key_sha256 {
                let d = parse_digest(&k.to_ascii_lowercase()).ok_or_else(|| {
                    invalid(format!(
                        "{at}: key_sha256 {k:?} is not 64 hex digits (promptd hash-key prints it)"
                    ))
                })?;
                if !keys.insert(d) {
                    return Err(invalid(format!(
                        "{at}: a key is shared with another tenant"
                    )));
                }
                digests.push(d);
            }
            let patterns = |ps: &[String]| -> Result<Vec<Pattern>, TenantsError> {
                ps.iter()
                    .map(|p| Pattern::parse(p).map_err(|e| invalid(format!("{at}: {e}"))))
                    .collect()
            };
            if !(1..=1000).contains(&t.weight) {
                return Err(invalid(format!(
                    "{at}: weight {} is not in 1..=1000",
                    t.weight
                )));
            }
            let limits =
                Limits::from_config(&t.quotas).map_err(|e| invalid(format!("{at}: {e}")))?;
            let limiter = self
                .limiters
                .lock()
                .entry(t.name.clone())
                .or_insert_with(|| Arc::new(Limiter::new(limits)))
                .clone();
            limiter.set_limits(limits);
            let max_prompt_length = t
                .quotas
                .max_prompt_length
                .unwrap_or(self.max_prompt_length)
                .min(self.max_prompt_length);
            tenants.push(Arc::new(Tenant {
                name: t.name,
                admin: t.admin,
                keys: digests,
                tasks: patterns(&t.tasks)?,
                public: patterns(&t.public)?,
                weight: t.weight,
                max_prompts: t.quotas.max_prompts.unwrap_or(1000),
                max_prompt_length,
                limiter,
            }));
        }
        Ok(TenantSet { tenants })
    }

    /// Who sent `authorization` (the header's value). Open servers accept anyone.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        if !self.enabled() {
            return Ok(Caller::Open);
        }
        let value = authorization.ok_or(AuthError::Missing)?;
        let key = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(AuthError::Malformed)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.current()
            .by_key(&digest)
            .map(Caller::Tenant)
            .ok_or(AuthError::Unknown)
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No Authorization header.
    #[error("missing `Authorization: Bearer <key>`")]
    Missing,
    /// Not a bearer credential.
    #[error("the Authorization header must be `Bearer <key>`")]
    Malformed,
    /// No tenant has this key.
    #[error("unknown API key")]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shell_patterns() {
        let cases = [
            ("acme.*", "acme.sentiment", true),
            ("acme.*", "acme.", true),
            ("acme.*", "acmex", false),
            ("acme.*", "other.acme.x", false),
            ("*", "anything", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*-prod", "x-y-prod", true),
            ("*-prod", "x-prod-y", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("a*b*c", "aXbYbZc", true),
        ];
        for (p, s, want) in cases {
            assert_eq!(Pattern(p.into()).matches(s), want, "{p} vs {s}");
        }
    }

    #[test]
    fn file_errors_name_the_tenant_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let key = hash_key("k1");
        let cases = [
            ("[[tenants]]\nname = \"a\"\nkey_sha256 = []\n", "at least one key"),
            ("[[tenants]]\nname = \"a\"\nkey_sha256 = [\"zz\"]\n", "64 hex"),
            (
                &*format!("[[tenants]]\nname = \"a\"\nkey_sha256 = [\"{key}\"]\n[[tenants]]\nname = \"a\"\nkey_sha256 = [\"{}\"]\n", hash_key("k2")),
                "unique",
            ),
            (
                &*format!("[[tenants]]\nname = \"a\"\nkey_sha256 = [\"{key}\"]\n[[tenants]]\nname = \"b\"\nkey_sha256 = [\"{key}\"]\n"),
                "shared",
            ),
            (&*format!("[[tenants]]\nname = \"a\"\nkey_sha256 = [\"{key}\"]\ntasks = [\"a/b\"]\n"), "pattern"),
            (&*format!("[[tenants]]\nname = \"a\"\nkey_sha256 = [\"{key}\"]\nweight = 0\n"), "weight"),
            (&*format!("[[tenants]]\nname = \"a\"\nkey_sha256 = [\"{key}\"]\nsurprise = 1\n"), "unknown field"),
            (&*format!("[[tenants]]\nname = \"a\"\nkey_sha256 = [\"{key}\"]\n[tenants.quotas]\nrequests_per_second = -1.0\n"), "requests_per_second"),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("t{i}.toml"));
            std::fs::write(&path, text).unwrap();
            let err = Tenants::load(&path, 100).err().expect(want).to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn keys_resolve_to_their_tenant_and_ownership_is_first_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        std::fs::write(
            &path,
            format!(
                r#"
[[tenants]]
name = "acme"
key_sha256 = ["{}", "{}"]
tasks = ["acme.*"]
public = ["acme.public-*"]

[[tenants]]
name = "globex"
key_sha256 = ["{}"]
tasks = ["globex.*", "acme.*"]

[[tenants]]
name = "ops"
admin = true
key_sha256 = ["{}"]
"#,
                hash_key("acme-old"),
                hash_key("acme-new"),
                hash_key("globex-key"),
                hash_key("ops-key")
            ),
        )
        .unwrap();
        let tenants = Tenants::load(&path, 100).unwrap();
        let set = tenants.current();
        let who = |h: &str| tenants.authenticate(Some(h));
        for key in ["acme-old", "acme-new"] {
            assert_eq!(who(&format!("Bearer {key}")).unwrap().name(), "acme");
        }
        assert_eq!(who("Bearer nope").unwrap_err(), AuthError::Unknown);
        assert_eq!(who("Basic abc").unwrap_err(), AuthError::Malformed);
        assert_eq!(tenants.authenticate(None).unwrap_err(), AuthError::Missing);
        let acme = who("Bearer acme-new").unwrap();
        let globex = who("Bearer globex-key").unwrap();
        let ops = who("Bearer ops-key").unwrap();
        assert!(acme.may_write(&set, "acme.x"));
        assert!(
            !globex.may_write(&set, "acme.x"),
            "acme is first in file order"
        );
        assert!(!globex.may_read(&set, "acme.x"));
        assert!(globex.may_read(&set, "acme.public-faq"));
        assert!(!globex.may_write(&set, "acme.public-faq"));
        assert!(!acme.may_write(&set, "unowned"));
        assert!(ops.may_write(&set, "unowned") && ops.is_admin());
        assert!(Caller::Open.may_write(&set, "anything"));
    }
}

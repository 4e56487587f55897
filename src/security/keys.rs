//! API keys: the keys file, its parser, `cra keys add|list|revoke`, and the lookup of a
//! presented key.
//!
//! A key is `cra_` followed by 64 hex digits: 256 random bits from the operating system. It is
//! printed once, by `cra keys add`, and never stored: the file keeps its SHA-256. A plain, fast
//! hash is enough because the key is high-entropy: a slow password hash (argon2, bcrypt) exists
//! to make guessing a low-entropy password from its hash expensive, and no guessing can cover
//! 2^256 keys; a fast hash also keeps the check per call at about a microsecond. A presented key
//! is hashed and compared, in constant time (subtle), with every hash in the file, revoked ones
//! included, so that the time taken says nothing about which hash, if any, it matched.
//!
//! The file is TOML (`--api-keys FILE`), one `[[client]]` table per client:
//!
//! ```toml
//! [[client]]
//! id = "acme"
//! rate = "100/s"   # optional: this client's own limit (else --rate-limit)
//! burst = 200      # optional: its burst (else one second's worth of its rate)
//!
//! [[client.key]]
//! sha256 = "…64 hex digits…"
//! added = "2026-01-31T12:00:00Z"
//! revoked = "2026-03-01T09:00:00Z"   # present once revoked
//! ```
//!
//! A client may hold several keys at once (to rotate: add a new one, move the client over,
//! revoke the old one by its fingerprint), and none at all (a client of client certificates
//! with a limit of its own). [`parse`] is pure: bytes in, the validated file or every problem
//! out.
use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::{
    caller::ClientId,
    rate::{Limit, Limiter, Rate, RateLimits},
};

/// The prefix of every key, so that a leaked key is recognisable (secret scanners, logs).
pub const KEY_PREFIX: &str = "cra_";
/// Random bytes in a key.
pub const KEY_BYTES: usize = 32;
/// Hex digits of a key's hash shown as its fingerprint (`cra keys list`, `revoke --key`).
pub const FINGERPRINT_LEN: usize = 12;
/// Longest client id.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// The keys file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    #[serde(default, rename = "client", skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ClientEntry>,
}

/// One client of the keys file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    pub id: String,
    /// This client's own rate limit; else the server's default (`--rate-limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// This client's own burst; else one second's worth of its rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, rename = "key", skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyEntry>,
}

/// One key of a client: its hash, never the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// SHA-256 of the key, 64 lowercase hex digits.
    pub sha256: String,
    /// When it was added (RFC 3339).
    pub added: String,
    /// When it was revoked (RFC 3339); a revoked key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

impl KeyEntry {
    pub fn fingerprint(&self) -> &str {
        self.sha256.get(..FINGERPRINT_LEN).unwrap_or(&self.sha256)
    }
}

impl ClientEntry {
    /// The client's own limit, if its entry sets a rate.
    pub fn limit(&self) -> Option<Limit> {
        self.rate.and_then(|r| Limit::new(r, self.burst).ok())
    }
}

/// Why a keys file was refused: every problem found.
#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error("the keys file is not UTF-8 text")]
    NotUtf8,
    #[error("the keys file is not valid TOML for a keys file: {0}")]
    Toml(String),
    #[error("the keys file has {} problem(s): {}", .0.len(), .0.join("; "))]
    Invalid(Vec<String>),
}

/// Whether `id` may name a client: 1 to 128 characters of letters, digits and `. _ - @ :`.
pub fn check_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_CLIENT_ID_LEN {
        return Err(format!(
            "a client id must have 1 to {MAX_CLIENT_ID_LEN} characters"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':')))
    {
        return Err(format!(
            "a client id may hold letters, digits and . _ - @ : only, not {c:?}"
        ));
    }
    Ok(())
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses and checks a keys file: client ids valid and unique, hashes well-formed and unique,
/// rates and bursts valid. Pure: no I/O.
pub fn parse(bytes: &[u8]) -> Result<KeysFile, KeysFileError> {
    let text = std::str::from_utf8(bytes).map_err(|_| KeysFileError::NotUtf8)?;
    let file: KeysFile = toml::from_str(text).map_err(|e| KeysFileError::Toml(e.to_string()))?;
    let mut problems = Vec::new();
    let mut ids = HashSet::new();
    let mut hashes = HashSet::new();
    for (i, c) in file.clients.iter().enumerate() {
        let name = if c.id.len() <= MAX_CLIENT_ID_LEN {
            format!("client {:?}", c.id)
        } else {
            format!("client #{}", i + 1)
        };
        if let Err(e) = check_client_id(&c.id) {
            problems.push(format!("{name}: {e}"));
        }
        if !ids.insert(c.id.as_str()) {
            problems.push(format!("{name} appears more than once; merge its entries"));
        }
        if c.burst == Some(0) {
            problems.push(format!("{name}: burst must be at least 1"));
        }
        if c.burst.is_some() && c.rate.is_none() {
            problems.push(format!(
                "{name}: a burst needs a rate (rate = \"N/s\") in the same entry"
            ));
        }
        for k in &c.keys {
            if !is_sha256_hex(&k.sha256) {
                problems.push(format!(
                    "{name}: sha256 must be 64 lowercase hex digits (the SHA-256 of a key)"
                ));
            } else if !hashes.insert(k.sha256.as_str()) {
                problems.push(format!(
                    "{name}: the key {} is listed twice",
                    k.fingerprint()
                ));
            }
            for (field, v) in [("added", Some(&k.added)), ("revoked", k.revoked.as_ref())] {
                if let Some(v) = v {
                    if chrono::DateTime::parse_from_rfc3339(v).is_err() {
                        problems.push(format!(
                            "{name}: {field} must be an RFC 3339 time such as 2026-01-31T12:00:00Z"
                        ));
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(file)
    } else {
        Err(KeysFileError::Invalid(problems))
    }
}

impl KeysFile {
    /// The file as TOML, with a header saying what it is.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        format!(
            "# CRA API keys: managed with `cra keys add|list|revoke`. Only SHA-256 hashes of the keys\n\
             # are kept here; a key is shown once, when it is added.\n\n{body}"
        )
    }

    pub fn client(&self, id: &str) -> Option<&ClientEntry> {
        self.clients.iter().find(|c| c.id == id)
    }
}

/// SHA-256 of a key, as stored.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new random key: `cra_` and 64 hex digits from the operating system's generator.
pub fn generate_key() -> std::io::Result<String> {
    use rand::TryRngCore;
    let mut bytes = [0u8; KEY_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(std::io::Error::other)?;
    Ok(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
}

/// A client of the compiled key set.
#[derive(Debug)]
pub struct Client {
    pub id: ClientId,
    /// The client's own limiter, if its entry sets a rate.
    pub limiter: Option<Arc<Limiter>>,
}

/// What a presented key is.
#[derive(Debug, Clone)]
pub enum Lookup {
    Valid(Arc<Client>),
    Revoked(ClientId),
    Unknown,
}

/// The keys file compiled for lookups: every hash with its client, and the clients by id.
#[derive(Debug, Default)]
pub struct KeySet {
    hashes: Vec<[u8; 32]>,
    /// Per hash: the index of its client, and whether it is revoked.
    owners: Vec<(u32, bool)>,
    clients: Vec<Arc<Client>>,
    by_id: HashMap<ClientId, usize>,
}

impl KeySet {
    /// Compiles `file`, taking each client's own limiter from `limits` (the same one across
    /// reloads while its limit is unchanged).
    pub fn compile(file: &KeysFile, limits: &RateLimits) -> KeySet {
        let mut set = KeySet::default();
        for c in &file.clients {
            let id = ClientId::new(&c.id);
            let limiter = c.limit().map(|l| limits.own(&id, l));
            let index = set.clients.len();
            set.clients.push(Arc::new(Client {
                id: id.clone(),
                limiter,
            }));
            set.by_id.insert(id, index);
            for k in &c.keys {
                let mut h = [0u8; 32];
                if hex::decode_to_slice(&k.sha256, &mut h).is_ok() {
                    set.hashes.push(h);
                    set.owners.push((index as u32, k.revoked.is_some()));
                }
            }
        }
        limits.retain_own(&|id: &ClientId| set.by_id.contains_key(id));
        set
    }

    /// The client of `key`: every stored hash is compared in constant time, without stopping
    /// at a match.
    pub fn lookup(&self, key: &str) -> Lookup {
        let digest = hash_key(key);
        let mut found = subtle::Choice::from(0u8);
        let mut index = 0u32;
        for (i, h) in self.hashes.iter().enumerate() {
            let eq = h[..].ct_eq(&digest[..]);
            index.conditional_assign(&(i as u32), eq);
            found |= eq;
        }
        if !bool::from(found) {
            return Lookup::Unknown;
        }
        let (owner, revoked) = self.owners[index as usize];
        let client = &self.clients[owner as usize];
        if revoked {
            Lookup::Revoked(client.id.clone())
        } else {
            Lookup::Valid(client.clone())
        }
    }

    /// The entry of a client (for the limit of a client-certificate identity).
    pub fn client(&self, id: &ClientId) -> Option<&Arc<Client>> {
        self.by_id.get(id).map(|&i| &self.clients[i])
    }

    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Keys not revoked.
    pub fn active_keys(&self) -> usize {
        self.owners.iter().filter(|(_, revoked)| !revoked).count()
    }
}

/// Reads and parses the keys file at `path`; the error names the file and what to fix.
pub fn load(path: &Path) -> Result<KeysFile, String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the API keys file {}: {e}; create it with `cra keys add CLIENT --api-keys {}`",
            path.display(),
            path.display()
        )
    })?;
    parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `file` to `path` atomically (a temporary file beside it, then a rename), so that a
/// server watching it never reads half a file. Mode 0640 on Unix: hashes only, but no one
/// else's business.
pub fn save(path: &Path, file: &KeysFile) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "api-keys".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o640);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(file.to_toml().as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `cra keys add`: a new key for `client` (created if new), with its limit set when given.
/// Returns the key, to be shown once.
pub fn add(
    path: &Path,
    client: &str,
    rate: Option<Rate>,
    burst: Option<u32>,
) -> anyhow::Result<String> {
    check_client_id(client).map_err(anyhow::Error::msg)?;
    if burst == Some(0) {
        anyhow::bail!("--burst must be at least 1");
    }
    let mut file = if path.exists() {
        load(path).map_err(anyhow::Error::msg)?
    } else {
        KeysFile::default()
    };
    let key = generate_key()?;
    let entry = KeyEntry {
        sha256: hex::encode(hash_key(&key)),
        added: now_rfc3339(),
        revoked: None,
    };
    match file.clients.iter_mut().find(|c| c.id == client) {
        Some(c) => {
            c.keys.push(entry);
            if rate.is_some() {
                c.rate = rate;
            }
            if burst.is_some() {
                c.burst = burst;
            }
        }
        None => file.clients.push(ClientEntry {
            id: client.to_owned(),
            rate,
            burst,
            keys: vec![entry],
        }),
    }
    if let Some(c) = file.client(client) {
        if c.burst.is_some() && c.rate.is_none() {
            anyhow::bail!("--burst needs --rate for client {client}");
        }
    }
    save(path, &file)
        .map_err(|e| anyhow::anyhow!("cannot write the API keys file {}: {e}", path.display()))?;
    Ok(key)
}

/// `cra keys revoke`: revokes every key of `client`, or only the one with `fingerprint`.
/// Returns how many keys it revoked.
pub fn revoke(path: &Path, client: &str, fingerprint: Option<&str>) -> anyhow::Result<usize> {
    let mut file = load(path).map_err(anyhow::Error::msg)?;
    let Some(c) = file.clients.iter_mut().find(|c| c.id == client) else {
        anyhow::bail!(
            "no client {client:?} in {}; `cra keys list` shows the clients",
            path.display()
        );
    };
    let now = now_rfc3339();
    let mut n = 0;
    for k in c
        .keys
        .iter_mut()
        .filter(|k| k.revoked.is_none())
        .filter(|k| fingerprint.is_none_or(|f| k.sha256.starts_with(f)))
    {
        k.revoked = Some(now.clone());
        n += 1;
    }
    if n == 0 {
        anyhow::bail!(
            "client {client:?} has no active key{}; `cra keys list` shows its keys",
            fingerprint
                .map(|f| format!(" with fingerprint {f}"))
                .unwrap_or_default()
        );
    }
    save(path, &file)
        .map_err(|e| anyhow::anyhow!("cannot write the API keys file {}: {e}", path.display()))?;
    Ok(n)
}

/// `cra keys list`: the clients, their limits and keys (fingerprints, never keys).
pub fn list(path: &Path) -> anyhow::Result<String> {
    let file = load(path).map_err(anyhow::Error::msg)?;
    let mut out = String::new();
    if file.clients.is_empty() {
        out.push_str("no clients\n");
    }
    for c in &file.clients {
        let limit = c
            .limit()
            .map_or_else(|| "the default limit".to_owned(), |l| l.to_string());
        let active = c.keys.iter().filter(|k| k.revoked.is_none()).count();
        let _ = writeln!(out, "{}  ({active} active key(s), limit: {limit})", c.id);
        for k in &c.keys {
            let _ = match &k.revoked {
                None => writeln!(out, "  {}  added {}", k.fingerprint(), k.added),
                Some(r) => writeln!(out, "  {}  added {}  revoked {r}", k.fingerprint(), k.added),
            };
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(key: &str) -> KeysFile {
        KeysFile {
            clients: vec![ClientEntry {
                id: "acme".into(),
                rate: Some("10/s".parse().unwrap()),
                burst: None,
                keys: vec![KeyEntry {
                    sha256: hex::encode(hash_key(key)),
                    added: "2026-01-31T12:00:00Z".into(),
                    revoked: None,
                }],
            }],
        }
    }

    #[test]
    fn a_saved_file_parses_back_the_same() {
        let f = file_with("cra_x");
        assert_eq!(parse(f.to_toml().as_bytes()).unwrap(), f);
    }

    #[test]
    fn keys_are_long_random_and_prefixed() {
        let (a, b) = (generate_key().unwrap(), generate_key().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 2 * KEY_BYTES);
    }

    #[test]
    fn lookup_finds_valid_revoked_and_unknown_keys() {
        let mut f = file_with("cra_good");
        f.clients.push(ClientEntry {
            id: "old".into(),
            rate: None,
            burst: None,
            keys: vec![KeyEntry {
                sha256: hex::encode(hash_key("cra_old")),
                added: "2026-01-31T12:00:00Z".into(),
                revoked: Some("2026-02-01T00:00:00Z".into()),
            }],
        });
        let set = KeySet::compile(&f, &RateLimits::new(None));
        assert!(
            matches!(set.lookup("cra_good"), Lookup::Valid(c) if c.id.as_str() == "acme" && c.limiter.is_some())
        );
        assert!(matches!(set.lookup("cra_old"), Lookup::Revoked(id) if id.as_str() == "old"));
        assert!(matches!(set.lookup("cra_goof"), Lookup::Unknown));
        assert!(matches!(set.lookup(""), Lookup::Unknown));
        assert_eq!((set.clients(), set.active_keys()), (2, 1));
    }

    #[test]
    fn every_problem_of_a_file_is_named() {
        let text = r#"
            [[client]]
            id = "bad id"
            burst = 0
            [[client.key]]
            sha256 = "xyz"
            added = "yesterday"
            [[client]]
            id = "bad id"
        "#;
        let e = parse(text.as_bytes()).unwrap_err().to_string();
        for want in [
            "letters, digits",
            "more than once",
            "burst must be at least 1",
            "a burst needs a rate",
            "64 lowercase hex",
            "RFC 3339",
        ] {
            assert!(e.contains(want), "{want:?} missing from: {e}");
        }
        assert!(matches!(parse(b"\xff"), Err(KeysFileError::NotUtf8)));
        assert!(matches!(
            parse(b"[[client]]\nid = \"a\"\nsecret = 1\n"),
            Err(KeysFileError::Toml(_))
        ));
        assert!(matches!(
            parse(b"[[client]]\nid = \"a\"\nrate = \"fast\"\n"),
            Err(KeysFileError::Toml(_))
        ));
        assert_eq!(parse(b"").unwrap(), KeysFile::default());
    }

    #[test]
    fn add_list_revoke_on_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let k1 = add(&path, "acme", Some("5/s".parse().unwrap()), Some(10)).unwrap();
        let k2 = add(&path, "acme", None, None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&k1) && !text.contains(&k2),
            "keys are never stored"
        );
        let f = load(&path).unwrap();
        assert_eq!(f.clients[0].keys.len(), 2);
        assert_eq!(f.clients[0].burst, Some(10), "a later add keeps the limit");
        let fp1 = f.clients[0].keys[0].fingerprint().to_owned();
        assert_eq!(revoke(&path, "acme", Some(&fp1)).unwrap(), 1);
        let set = KeySet::compile(&load(&path).unwrap(), &RateLimits::new(None));
        assert!(matches!(set.lookup(&k1), Lookup::Revoked(_)));
        assert!(matches!(set.lookup(&k2), Lookup::Valid(_)));
        let listed = list(&path).unwrap();
        assert!(
            listed.contains("acme  (1 active key(s), limit: 5/s (burst 10))"),
            "{listed}"
        );
        assert!(listed.contains(&fp1) && listed.contains("revoked"));
        assert_eq!(revoke(&path, "acme", None).unwrap(), 1);
        assert!(
            revoke(&path, "acme", None).is_err(),
            "nothing left to revoke"
        );
        assert!(revoke(&path, "nobody", None).is_err());
        assert!(add(&path, "no spaces", None, None).is_err());
    }
}

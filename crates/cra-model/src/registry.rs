//! A set of models and how live traffic is shared between them: the champion, challengers
//! (A/B by weight, sticky per `application_id`) and shadows, read from a models file.
//!
//! ```toml
//! [[models]]
//! path = "models/default"   # relative paths are taken from the file's directory
//! role = "champion"         # champion | challenger | shadow
//! weight = 90               # share of live traffic, champion and challengers only
//! [[models]]
//! path = "models/challenger"
//! role = "challenger"
//! weight = 10
//! [[models]]
//! path = "models/candidate"
//! role = "shadow"
//! ```
//!
//! A [`ModelSet`] is one verified generation of that file: every bundle loaded and checked
//! against its canaries before the set exists. The server keeps the current set behind an
//! `ArcSwap` and reloads it (`cra::scoring::Registry`); `cra score` and the Python package load
//! one set with [`load_set`] and route with [`ModelSet::route`], so every entry point sends an
//! application to the same model.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use serde::Deserialize;

use crate::bundle::{BundleError, ModelBundle};

/// Most models one file may list.
pub const MAX_MODELS: usize = 16;
/// Longest model version served (it is part of every answer).
pub const MAX_MODEL_VERSION_BYTES: usize = 256;

/// What a model does with the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Answers the share of live traffic its weight gives; exactly one per set.
    Champion,
    /// Answers the share of live traffic its weight gives (A/B).
    Challenger,
    /// Scores every application a live model scores, off the response path; never answers.
    Shadow,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Champion => "champion",
            Role::Challenger => "challenger",
            Role::Shadow => "shadow",
        }
    }
}

/// Where the set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// `--model DIR`: one champion.
    Bundle(PathBuf),
    /// `--models FILE`.
    File(PathBuf),
}

impl ModelSource {
    /// `--models FILE` when given, else `--model DIR`.
    pub fn of(models: Option<&Path>, model: &Path) -> ModelSource {
        match models {
            Some(file) => ModelSource::File(file.to_owned()),
            None => ModelSource::Bundle(model.to_owned()),
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Bundle(d) => write!(f, "--model {}", d.display()),
            ModelSource::File(p) => write!(f, "--models {}", p.display()),
        }
    }
}

/// Why a set was refused; each says which file or bundle and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "cannot read the models file {path}: {source}; pass an existing TOML file to --models"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the models file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("the models file {path} is not valid: {}", .problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("model {index} ({dir}) of {source_name}: {error}")]
    Bundle {
        index: usize,
        dir: PathBuf,
        source_name: String,
        error: Box<BundleError>,
    },
    #[error("model {index} ({dir}) of {source_name}: {problem}")]
    Unusable {
        index: usize,
        dir: PathBuf,
        source_name: String,
        problem: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    models: Vec<EntrySpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntrySpec {
    path: PathBuf,
    role: Role,
    weight: Option<u32>,
}

/// One model of a set.
#[derive(Debug, Clone)]
pub struct Member {
    pub bundle: Arc<ModelBundle>,
    pub role: Role,
    /// Share of live traffic (0 for shadows).
    pub weight: u32,
    /// The bundle directory as resolved.
    pub dir: PathBuf,
}

impl Member {
    /// Why this model cannot explain its decisions (a booster without node covers), if so;
    /// the server logs it at load.
    pub fn explainer_problem(&self) -> Option<&str> {
        self.bundle.explainer().err()
    }
}

/// One verified generation of the registry.
#[derive(Debug)]
pub struct ModelSet {
    /// The champion first, then the challengers, in file order.
    pub live: Vec<Member>,
    pub shadows: Vec<Member>,
    /// Running sums of the live weights, for routing.
    cumulative: Vec<u64>,
    pub generation: u64,
    pub loaded_at: SystemTime,
}

/// A 64-bit hash of an application id that never changes between builds, platforms or
/// processes (FNV-1a, then the SplitMix64 finaliser so that every bit depends on every byte).
pub fn sticky_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl ModelSet {
    /// A set of one champion.
    pub fn single(bundle: Arc<ModelBundle>, dir: PathBuf) -> ModelSet {
        ModelSet::new(
            vec![Member {
                bundle,
                role: Role::Champion,
                weight: 100,
                dir,
            }],
            Vec::new(),
            0,
        )
    }

    fn new(live: Vec<Member>, shadows: Vec<Member>, generation: u64) -> ModelSet {
        let mut sum = 0u64;
        let cumulative = live
            .iter()
            .map(|m| {
                sum += u64::from(m.weight);
                sum
            })
            .collect();
        ModelSet {
            live,
            shadows,
            cumulative,
            generation,
            loaded_at: SystemTime::now(),
        }
    }

    pub fn champion(&self) -> &Member {
        &self.live[0]
    }

    /// The live model of an application: sticky by `application_id` (the same id always goes
    /// to the same model under the same weights), at random without one.
    pub fn route(&self, application_id: &str) -> usize {
        if self.live.len() == 1 {
            return 0;
        }
        let total = *self.cumulative.last().unwrap_or(&1);
        let point = if application_id.is_empty() {
            rand::random::<u64>() % total
        } else {
            sticky_hash(application_id) % total
        };
        self.cumulative.partition_point(|&c| c <= point)
    }

    /// Every member, live first, with its index in that order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.live.iter().chain(&self.shadows)
    }

    /// The member whose bundle has this version, live or shadow.
    pub fn by_version(&self, version: &str) -> Option<&Member> {
        self.members().find(|m| m.bundle.version() == version)
    }

    /// A set in which the bundle of `version` decides alone, for a client that addresses
    /// that model by its version: no routing and no shadows. Its decisions keep the role the
    /// model has in this set. `None` when no loaded bundle has that version.
    pub fn pinned(&self, version: &str) -> Option<ModelSet> {
        let member = self.by_version(version)?.clone();
        let mut set = ModelSet::new(vec![member], Vec::new(), self.generation);
        set.loaded_at = self.loaded_at;
        Some(set)
    }
}

/// Loads and verifies the bundle of one entry.
fn load_member(
    index: usize,
    dir: PathBuf,
    role: Role,
    weight: u32,
    source: &ModelSource,
) -> Result<Member, RegistryError> {
    let bundle = ModelBundle::load(&dir).map_err(|error| RegistryError::Bundle {
        index,
        dir: dir.clone(),
        source_name: source.to_string(),
        error: Box::new(error),
    })?;
    let unusable = |problem: String| RegistryError::Unusable {
        index,
        dir: dir.clone(),
        source_name: source.to_string(),
        problem,
    };
    let p = bundle
        .score(&crate::Application::example())
        .probability_default;
    if !(p.is_finite() && (0.0..=1.0).contains(&p)) {
        return Err(unusable(format!(
            "the example application scored {p}, not a probability; the bundle is broken, retrain it"
        )));
    }
    // Build the TreeSHAP tables now, not on the first explained call (a model that cannot
    // explain still serves: see `Member::explainer_problem`).
    let _ = bundle.explainer();
    if bundle.version().len() > MAX_MODEL_VERSION_BYTES {
        return Err(unusable(format!(
            "the model version is {} bytes long; at most {MAX_MODEL_VERSION_BYTES} are served (it is part of every answer): fix model_version in bundle.json",
            bundle.version().len()
        )));
    }
    Ok(Member {
        bundle: Arc::new(bundle),
        role,
        weight,
        dir,
    })
}

/// Reads, checks and loads the set of `source` (blocking: bundles are read and verified).
pub fn load_set(source: &ModelSource, generation: u64) -> Result<ModelSet, RegistryError> {
    let entries = match source {
        ModelSource::Bundle(dir) => vec![(dir.clone(), Role::Champion, 100)],
        ModelSource::File(path) => parse_file(path)?,
    };
    let mut live = Vec::new();
    let mut shadows = Vec::new();
    for (index, (dir, role, weight)) in entries.into_iter().enumerate() {
        let m = load_member(index, dir, role, weight, source)?;
        if role == Role::Shadow {
            shadows.push(m);
        } else {
            live.push(m);
        }
    }
    // The champion first.
    live.sort_by_key(|m| m.role != Role::Champion);
    Ok(ModelSet::new(live, shadows, generation))
}

/// The entries of a models file, checked: `(resolved dir, role, weight)` in file order.
fn parse_file(path: &Path) -> Result<Vec<(PathBuf, Role, u32)>, RegistryError> {
    let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
        path: path.to_owned(),
        source,
    })?;
    let spec: FileSpec = toml::from_str(&text).map_err(|e| RegistryError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    if spec.models.is_empty() {
        problems.push("it lists no [[models]]; it needs one with role = \"champion\"".into());
    }
    if spec.models.len() > MAX_MODELS {
        problems.push(format!(
            "it lists {} models; at most {MAX_MODELS} are served",
            spec.models.len()
        ));
    }
    let champions = spec
        .models
        .iter()
        .filter(|m| m.role == Role::Champion)
        .count();
    if champions != 1 && !spec.models.is_empty() {
        problems.push(format!(
            "it has {champions} models with role = \"champion\"; it needs exactly one"
        ));
    }
    let mut seen: BTreeMap<PathBuf, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, m) in spec.models.iter().enumerate() {
        let dir = if m.path.is_absolute() {
            m.path.clone()
        } else {
            base.join(&m.path)
        };
        if let Some(first) = seen.insert(dir.clone(), i) {
            problems.push(format!(
                "models[{i}].path repeats models[{first}].path ({})",
                m.path.display()
            ));
        }
        let weight = match (m.role, m.weight) {
            (Role::Shadow, Some(_)) => {
                problems.push(format!(
                    "models[{i}] is a shadow and has a weight; shadows take no live traffic: remove the weight"
                ));
                0
            }
            (Role::Shadow, None) => 0,
            (_, None)
                if champions == 1 && spec.models.iter().all(|x| x.role != Role::Challenger) =>
            {
                100
            }
            (role, None) => {
                problems.push(format!(
                    "models[{i}] ({}) has no weight; a champion or challenger beside challengers needs weight = N (its share of live traffic)",
                    role.as_str()
                ));
                0
            }
            (role, Some(0)) => {
                problems.push(format!(
                    "models[{i}] ({}) has weight 0; give it a weight of at least 1, or make it a shadow",
                    role.as_str()
                ));
                0
            }
            (role, Some(w)) if w > 1_000_000 => {
                problems.push(format!(
                    "models[{i}] ({}) has weight {w}; weights are shares, at most 1000000",
                    role.as_str()
                ));
                0
            }
            (_, Some(w)) => w,
        };
        out.push((dir, m.role, weight));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(RegistryError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sticky_hash_is_stable() {
        // Pinned: a change would move every application between models.
        assert_eq!(sticky_hash(""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(sticky_hash("app-1"), 0xc769_8e9c_b5f2_f545);
        assert_ne!(sticky_hash("app-1"), sticky_hash("app-2"));
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("models.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_bad_file_names_every_problem() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            r#"
[[models]]
path = "a"
role = "challenger"
weight = 0
[[models]]
path = "b"
role = "shadow"
weight = 5
[[models]]
path = "a"
role = "challenger"
"#,
        );
        let e = parse_file(&p).unwrap_err().to_string();
        for want in [
            "0 models with role = \"champion\"",
            "models[0] (challenger) has weight 0",
            "models[1] is a shadow and has a weight",
            "models[2].path repeats models[0].path",
            "models[2] (challenger) has no weight",
        ] {
            assert!(e.contains(want), "{want:?} not in {e}");
        }
    }

    #[test]
    fn unknown_keys_and_roles_are_refused_with_the_place() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "[[models]]\npath = \"a\"\nrole = \"king\"\n");
        let e = parse_file(&p).unwrap_err().to_string();
        assert!(e.contains("king") && e.contains("champion"), "{e}");
        let p = write(
            d.path(),
            "[[models]]\npath = \"a\"\nrole = \"champion\"\nwieght = 3\n",
        );
        let e = parse_file(&p).unwrap_err().to_string();
        assert!(e.contains("wieght"), "{e}");
    }

    #[test]
    fn a_lone_champion_needs_no_weight_and_paths_are_relative_to_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "[[models]]\npath = \"m\"\nrole = \"champion\"\n[[models]]\npath = \"/abs\"\nrole = \"shadow\"\n",
        );
        let e = parse_file(&p).unwrap();
        assert_eq!(e[0], (d.path().join("m"), Role::Champion, 100));
        assert_eq!(e[1], (PathBuf::from("/abs"), Role::Shadow, 0));
    }
}

//! `--model org/name` (or `org/name:FILE.gguf`): files fetched from the Hugging Face Hub into
//! its usual cache, for users with the internet. Tests never need this path.

use crate::error::{EngineError, Result};
use std::path::{Path, PathBuf};

/// A Hub model reference: repository id and, for GGUF repos with several files, which file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRef {
    pub repo: String,
    pub file: Option<String>,
}

/// Reads `org/name[:file]`; anything that exists on disk, is absolute, or does not have
/// exactly one `/` is not a Hub reference.
pub fn parse_hub_ref(s: &str) -> Option<HubRef> {
    if Path::new(s).exists() || s.starts_with('/') || s.starts_with('.') {
        return None;
    }
    let (repo, file) = match s.split_once(':') {
        Some((r, f)) if !f.is_empty() => (r, Some(f.to_string())),
        Some(_) => return None,
        None => (s, None),
    };
    let valid = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    match repo.split_once('/') {
        Some((org, name)) if valid(org) && valid(name) && !name.contains('/') => Some(HubRef {
            repo: repo.to_string(),
            file,
        }),
        _ => None,
    }
}

/// Downloads what `model::load` needs and returns the local path to give it: the GGUF file,
/// or the snapshot directory holding config.json, tokenizer files and safetensors shards.
#[cfg(feature = "hub")]
pub fn fetch(r: &HubRef, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let hub_err = |e: hf_hub::api::sync::ApiError| {
        EngineError::Fetch(format!("Hugging Face Hub, {}: {e}", r.repo))
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(hub_err)?;
    let repo = api.model(r.repo.clone());
    if let Some(file) = &r.file {
        progress(&format!("fetching {file} from {}", r.repo));
        return repo.get(file).map_err(hub_err);
    }
    let files: Vec<String> = repo
        .info()
        .map_err(hub_err)?
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .collect();
    let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
    if !files.iter().any(|f| f == "config.json") {
        return match ggufs.as_slice() {
            [one] => {
                progress(&format!("fetching {one} from {}", r.repo));
                repo.get(one).map_err(hub_err)
            }
            [] => Err(EngineError::Fetch(format!(
                "{} has neither config.json nor a .gguf file",
                r.repo
            ))),
            many => Err(EngineError::Fetch(format!(
                "{} has {} GGUF files; name one as {}:FILE (e.g. {})",
                r.repo,
                many.len(),
                r.repo,
                many[0]
            ))),
        };
    }
    let wanted = files.iter().filter(|f| {
        matches!(
            f.as_str(),
            "config.json" | "tokenizer.json" | "tokenizer_config.json"
        ) || f.ends_with(".safetensors")
    });
    let mut config = None;
    for f in wanted {
        progress(&format!("fetching {f} from {}", r.repo));
        let path = repo.get(f).map_err(hub_err)?;
        if f == "config.json" {
            config = Some(path);
        }
    }
    let config = config.expect("config.json is listed");
    Ok(config.parent().map(Path::to_path_buf).unwrap_or(config))
}

#[cfg(not(feature = "hub"))]
pub fn fetch(r: &HubRef, _progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    Err(EngineError::Fetch(format!(
        "{}: this build has no Hub support (build with the `hub` feature)",
        r.repo
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_references_are_told_apart_from_paths() {
        assert_eq!(
            parse_hub_ref("HuggingFaceTB/SmolLM2-135M-Instruct"),
            Some(HubRef {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                file: None
            })
        );
        assert_eq!(
            parse_hub_ref("org/repo-GGUF:model.Q4_0.gguf")
                .unwrap()
                .file
                .as_deref(),
            Some("model.Q4_0.gguf")
        );
        for not_hub in [
            "/abs/model.gguf",
            "./model.gguf",
            "model.gguf",
            "a/b/c",
            "org/",
            "org/name:",
            "or g/name",
        ] {
            assert_eq!(parse_hub_ref(not_hub), None, "{not_hub}");
        }
    }
}

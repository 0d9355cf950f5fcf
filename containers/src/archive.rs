//! Image archives (the output of `docker save` / `podman save`), checked by
//! Perch before an engine sees them: a tar holding `manifest.json` naming
//! one image, whose config and layers are all in the archive. The image id
//! is the SHA-256 of the config, as the engines compute it.
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;

use ring::digest::{Context, SHA256};
use serde::Deserialize;

/// What an archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// `sha256:<64 hex>`.
    pub id: String,
    /// The tags the archive gives it (display only: engine tags are global).
    pub tags: Vec<String>,
}

/// Why an archive is refused (the reason a client sees).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArchiveError(pub String);

/// Configs larger than this are not read into memory.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

fn normalize(path: &Path) -> String {
    let s = path.to_string_lossy();
    s.trim_start_matches("./").to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the archive at `path` and names the image in it.
pub fn inspect(path: &Path) -> Result<ArchiveImage, ArchiveError> {
    let file = std::fs::File::open(path).map_err(|e| ArchiveError(format!("unreadable: {e}")))?;
    inspect_reader(std::io::BufReader::new(file))
}

/// [`inspect`] over any reader of the archive's bytes.
pub fn inspect_reader(reader: impl Read) -> Result<ArchiveImage, ArchiveError> {
    let not_tar = || {
        ArchiveError(
            "the body is not a tar archive (expected the output of `docker save` or `podman save`)"
                .into(),
        )
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|_| not_tar())?;
    let mut manifest: Option<Vec<u8>> = None;
    let mut small: HashMap<String, String> = HashMap::new();
    let mut names: HashSet<String> = HashSet::new();
    let mut count = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(|_| not_tar())?;
        count += 1;
        let name = normalize(&entry.path().map_err(|_| not_tar())?);
        let size = entry.header().size().map_err(|_| not_tar())?;
        if name == "manifest.json" {
            if size > MAX_CONFIG_BYTES {
                return Err(ArchiveError("manifest.json is too large".into()));
            }
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(|_| not_tar())?;
            manifest = Some(buf);
        } else if entry.header().entry_type().is_file() && size <= MAX_CONFIG_BYTES {
            let mut ctx = Context::new(&SHA256);
            let mut buf = [0u8; 16 << 10];
            loop {
                let n = entry.read(&mut buf).map_err(|_| not_tar())?;
                if n == 0 {
                    break;
                }
                ctx.update(&buf[..n]);
            }
            small.insert(name.clone(), hex(ctx.finish().as_ref()));
        }
        names.insert(name);
    }
    if count == 0 {
        return Err(not_tar());
    }
    let manifest =
        manifest.ok_or_else(|| ArchiveError("the archive has no manifest.json".into()))?;
    let entries: Vec<ManifestEntry> = serde_json::from_slice(&manifest)
        .map_err(|e| ArchiveError(format!("manifest.json does not parse: {e}")))?;
    let [entry] = entries.as_slice() else {
        return Err(ArchiveError(format!(
            "manifest.json must name exactly one image (it names {})",
            entries.len()
        )));
    };
    let config = normalize(Path::new(&entry.config));
    let digest = small.get(&config).ok_or_else(|| {
        ArchiveError(format!(
            "the image config `{config}` named by manifest.json is not in the archive"
        ))
    })?;
    if let Some(missing) = entry
        .layers
        .iter()
        .map(|l| normalize(Path::new(l)))
        .find(|l| !names.contains(l))
    {
        return Err(ArchiveError(format!(
            "the layer `{missing}` named by manifest.json is not in the archive"
        )));
    }
    Ok(ArchiveImage {
        id: format!("sha256:{digest}"),
        tags: entry.repo_tags.clone().unwrap_or_default(),
    })
}

/// Where the archive of image `id` is kept in `dir`: `<dir>/<hex>.tar`.
pub fn archive_path(dir: &Path, id: &str) -> std::path::PathBuf {
    dir.join(format!("{}.tar", id.trim_start_matches("sha256:")))
}

/// Whether `text` is an image id as Perch writes them.
pub fn is_image_id(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar of `files` (name, bytes).
    pub(crate) fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, bytes) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *bytes).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn config_id(config: &[u8]) -> String {
        format!(
            "sha256:{}",
            hex(ring::digest::digest(&SHA256, config).as_ref())
        )
    }

    #[test]
    fn a_saved_image_is_named_by_its_config_digest() {
        let config = br#"{"architecture":"amd64"}"#;
        let manifest = br#"[{"Config":"abc.json","RepoTags":["app:1"],"Layers":["l1/layer.tar"]}]"#;
        let tar = tar_of(&[
            ("abc.json", config),
            ("l1/layer.tar", b"layer"),
            ("manifest.json", manifest),
        ]);
        let img = inspect_reader(&tar[..]).unwrap();
        assert_eq!(img.id, config_id(config));
        assert!(is_image_id(&img.id));
        assert_eq!(img.tags, ["app:1"]);
    }

    #[test]
    fn bad_archives_say_what_is_wrong() {
        let err = |bytes: &[u8]| inspect_reader(bytes).unwrap_err().0;
        assert!(
            err(b"this is not a tar at all, just some text of some length").contains("not a tar")
        );
        assert!(err(&[]).contains("not a tar"));
        assert!(err(&tar_of(&[("a.json", b"{}")])).contains("no manifest.json"));
        assert!(err(&tar_of(&[("manifest.json", b"{")])).contains("does not parse"));
        assert!(err(&tar_of(&[("manifest.json", b"[]")])).contains("exactly one image"));
        let no_config = tar_of(&[("manifest.json", br#"[{"Config":"c.json","Layers":[]}]"#)]);
        assert!(err(&no_config).contains("`c.json`"));
        let no_layer = tar_of(&[
            ("c.json", b"{}"),
            (
                "manifest.json",
                br#"[{"Config":"c.json","Layers":["x/layer.tar"]}]"#,
            ),
        ]);
        assert!(err(&no_layer).contains("`x/layer.tar`"));
    }
}

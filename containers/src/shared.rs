//! Image archives kept beyond the node (cluster mode: in the shared
//! database), so that a container version runs on any node: the node
//! that takes an upload stores the archive there, and a node whose engine
//! lacks an image fetches it into its own image directory and loads it.
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a node keeps image archives: its own directory
/// (`<dir>/<hex>.tar`), and in cluster mode the store it shares with the
/// other nodes, from which a missing archive is fetched into the directory.
#[derive(Clone)]
pub struct Images {
    /// The node's image directory.
    pub dir: PathBuf,
    /// The archives every node sees (cluster mode).
    pub shared: Option<Arc<dyn SharedArchives>>,
}

/// Where image archives are shared between nodes. Every method blocks
/// (callers run it on blocking threads).
pub trait SharedArchives: Send + Sync {
    /// Stores the archive at `path` as image `id`'s (kept as it is when
    /// one is stored already: an image id names its content).
    fn put(&self, id: &str, path: &Path) -> Result<(), String>;
    /// Writes image `id`'s archive to `dest` (whole, checked, or not at
    /// all); false when none is stored.
    fn fetch(&self, id: &str, dest: &Path) -> Result<bool, String>;
    /// Forgets image `id`'s archive.
    fn delete(&self, id: &str) -> Result<(), String>;
}

//! Checkpoint fingerprints for bundle manifests.
//!
//! [`FileIdentity`] is a cheap identity — SHA-256 over the file size and the safetensors header bytes — that changes
//! whenever the tensor layout or size changes without reading tens of gigabytes.

use std::path::{Path, PathBuf};

pub use hyvideo_bundle::hash::to_hex;
use sha2::{Digest, Sha256};

/// Cheap identity of one checkpoint file: its size and a hash of its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    pub path: PathBuf,
    /// File size in bytes.
    pub size: u64,
    /// Hex SHA-256 over `size` (u64 little-endian) followed by the header bytes (for
    /// safetensors: the 8-byte length and the JSON header; for an index: the whole file).
    pub header_sha256: String,
}

impl FileIdentity {
    /// Identity from a file's size and its header bytes.
    pub fn new(path: &Path, size: u64, header: &[u8]) -> FileIdentity {
        let mut hasher = Sha256::new();
        hasher.update(size.to_le_bytes());
        hasher.update(header);
        FileIdentity {
            path: path.to_path_buf(),
            size,
            header_sha256: to_hex(&hasher.finalize()),
        }
    }
}

/// Combine several identities (e.g. an index and its shards) into one hex hash; file names
/// (not directories) take part so moving a checkpoint keeps its identity.
pub fn combine_identities(ids: &[FileIdentity]) -> String {
    let mut hasher = Sha256::new();
    for id in ids {
        let name = id
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(id.size.to_le_bytes());
        hasher.update(id.header_sha256.as_bytes());
    }
    to_hex(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_depend_on_size_header_and_name() {
        let a = FileIdentity::new(Path::new("/x/a.safetensors"), 10, b"hdr");
        let b = FileIdentity::new(Path::new("/y/a.safetensors"), 10, b"hdr");
        assert_eq!(a.header_sha256, b.header_sha256);
        assert_eq!(
            combine_identities(std::slice::from_ref(&a)),
            combine_identities(&[b])
        );
        let c = FileIdentity::new(Path::new("/x/a.safetensors"), 11, b"hdr");
        assert_ne!(a.header_sha256, c.header_sha256);
        let d = FileIdentity::new(Path::new("/x/b.safetensors"), 10, b"hdr");
        assert_ne!(
            combine_identities(std::slice::from_ref(&a)),
            combine_identities(&[d])
        );
        assert_eq!(a.header_sha256.len(), 64);
    }
}

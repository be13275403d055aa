//! Checkpoint fingerprints for bundle manifests.
//!
//! Two kinds, as model hubs use them: [`sha256_file`] is the full content hash (streamed in
//! 1 MiB reads, what Hugging Face shows as a file's LFS oid), and [`FileIdentity`] is a cheap
//! identity — SHA-256 over the file size and the safetensors header bytes — that changes
//! whenever the tensor layout or size changes without reading tens of gigabytes.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{CheckpointError, Result};

const READ_CHUNK: usize = 1 << 20;

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// SHA-256 of a file's whole content (hex), read in bounded chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CheckpointError::io(path, e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(to_hex(&hasher.finalize()))
}

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
    fn sha256_matches_known_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(
            sha256_file(&empty).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let abc = dir.path().join("abc");
        std::fs::write(&abc, b"abc").unwrap();
        assert_eq!(
            sha256_file(&abc).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Larger than one read chunk: equals the in-memory hash.
        let big: Vec<u8> = (0..(READ_CHUNK * 2 + 17)).map(|i| (i * 31) as u8).collect();
        let bigp = dir.path().join("big");
        std::fs::write(&bigp, &big).unwrap();
        assert_eq!(sha256_file(&bigp).unwrap(), to_hex(&Sha256::digest(&big)));
        match sha256_file(&dir.path().join("missing")) {
            Err(CheckpointError::Io { file, .. }) => assert!(file.ends_with("missing")),
            other => panic!("{other:?}"),
        }
    }

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

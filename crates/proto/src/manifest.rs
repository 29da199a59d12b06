//! The manifest: what a sender offers, frozen at offer time.
//!
//! Paths are relative, `/`-separated, as the sender saw them; the receiver sanitises them
//! (skiff-core `names`) before touching its disk. Only regular files and directories exist:
//! any other `kind` fails to decode. Decoding is bounded in bytes and entries before any
//! large allocation.

use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::ProtoError;

/// Chunk size of protocol v1 (the receiver refuses any other).
pub const CHUNK_SIZE: u32 = 1 << 20;
/// Most entries a manifest may have.
pub const MAX_ENTRIES: usize = 100_000;
/// Largest encoded manifest.
pub const MAX_MANIFEST_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub chunk_size: u32,
    #[serde(deserialize_with = "bounded_entries")]
    pub entries: Vec<Entry>,
}

/// One offered item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    File {
        path: String,
        size: u64,
        mode: u32,
        mtime: i64,
    },
    Dir {
        path: String,
        mode: u32,
    },
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::File { path, .. } | Entry::Dir { path, .. } => path,
        }
    }

    /// Size in bytes (0 for directories).
    pub fn size(&self) -> u64 {
        match self {
            Entry::File { size, .. } => *size,
            Entry::Dir { .. } => 0,
        }
    }
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ProtoError::TooLarge {
                len: bytes.len(),
                max: MAX_MANIFEST_BYTES,
            });
        }
        serde_json::from_slice(bytes).map_err(ProtoError::malformed)
    }

    /// Total bytes of all files, or `None` if the declared sizes overflow.
    pub fn total_bytes(&self) -> Option<u64> {
        self.entries
            .iter()
            .try_fold(0u64, |acc, e| acc.checked_add(e.size()))
    }

    pub fn file_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e, Entry::File { .. }))
            .count()
    }
}

/// Number of chunks of a file of `size` bytes (0 for an empty file).
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size.max(1)))
}

/// Length of chunk `index` of a file of `size` bytes, or `None` if out of range.
pub fn chunk_len(size: u64, chunk_size: u32, index: u64) -> Option<u32> {
    let cs = u64::from(chunk_size);
    let start = index.checked_mul(cs)?;
    if start >= size {
        return None;
    }
    u32::try_from((size - start).min(cs)).ok()
}

fn bounded_entries<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<Entry>, D::Error> {
    struct Bounded;
    impl<'de> Visitor<'de> for Bounded {
        type Value = Vec<Entry>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a list of at most {MAX_ENTRIES} entries")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(entry) = seq.next_element::<Entry>()? {
                if out.len() == MAX_ENTRIES {
                    return Err(serde::de::Error::custom(format!(
                        "more than {MAX_ENTRIES} entries"
                    )));
                }
                out.push(entry);
            }
            Ok(out)
        }
    }
    de.deserialize_seq(Bounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let m = Manifest {
            chunk_size: CHUNK_SIZE,
            entries: vec![
                Entry::Dir {
                    path: "photos".into(),
                    mode: 0o755,
                },
                Entry::File {
                    path: "photos/ü.jpg".into(),
                    size: 5,
                    mode: 0o644,
                    mtime: 1,
                },
            ],
        };
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        assert_eq!(m.total_bytes(), Some(5));
    }

    #[test]
    fn refuses_other_entry_kinds() {
        let text =
            br#"{"chunk_size":1048576,"entries":[{"kind":"symlink","path":"x","target":"/etc"}]}"#;
        assert!(matches!(
            Manifest::decode(text),
            Err(ProtoError::Malformed { .. })
        ));
    }

    #[test]
    fn refuses_too_many_entries() {
        let entry = r#"{"kind":"dir","path":"d","mode":493}"#;
        let text = format!(
            r#"{{"chunk_size":1048576,"entries":[{}]}}"#,
            vec![entry; MAX_ENTRIES + 1].join(",")
        );
        let err = Manifest::decode(text.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn refuses_oversized_encoding() {
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            Manifest::decode(&big),
            Err(ProtoError::TooLarge { .. })
        ));
    }

    #[test]
    fn overflowing_sizes_are_detected() {
        let m = Manifest {
            chunk_size: CHUNK_SIZE,
            entries: vec![
                Entry::File {
                    path: "a".into(),
                    size: u64::MAX,
                    mode: 0,
                    mtime: 0,
                },
                Entry::File {
                    path: "b".into(),
                    size: 1,
                    mode: 0,
                    mtime: 0,
                },
            ],
        };
        assert_eq!(m.total_bytes(), None);
    }

    #[test]
    fn chunk_arithmetic() {
        assert_eq!(chunk_count(0, CHUNK_SIZE), 0);
        assert_eq!(chunk_count(1, CHUNK_SIZE), 1);
        assert_eq!(chunk_count(u64::from(CHUNK_SIZE) + 1, CHUNK_SIZE), 2);
        assert_eq!(chunk_len(u64::from(CHUNK_SIZE) + 1, CHUNK_SIZE, 1), Some(1));
        assert_eq!(chunk_len(10, CHUNK_SIZE, 1), None);
        assert_eq!(chunk_len(10, CHUNK_SIZE, u64::MAX), None);
    }
}

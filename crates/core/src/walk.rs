//! The sender's walk: turns chosen files and folders into a manifest, frozen at offer time.
//!
//! Owns: which local file each manifest entry is, with its identity (device, inode, size,
//! mtime) so a later change is detected. Symlinks, devices and unreadable items inside a
//! folder are skipped and listed, never sent and never dropped quietly.
//! Must not: hash or read file contents (the first byte goes out without a hashing pass).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use skiff_proto::manifest::{Entry, Manifest, CHUNK_SIZE, MAX_ENTRIES};

use crate::{Error, Result};

/// Identity of a source file, checked whenever it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceId {
    pub size: u64,
    pub mtime_ns: i64,
    pub dev: u64,
    pub ino: u64,
}

impl SourceId {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A local file behind a manifest entry.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub id: SourceId,
}

/// An offer ready to serve: the manifest and, per entry, its local source (`None` for dirs).
#[derive(Debug, Clone)]
pub struct Offer {
    pub manifest: Manifest,
    pub sources: Vec<Option<Source>>,
    /// Items that were left out, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Walks `paths` (files or folders) into an offer.
pub fn build(paths: &[PathBuf]) -> Result<Offer> {
    let mut offer = Offer {
        manifest: Manifest {
            chunk_size: CHUNK_SIZE,
            entries: Vec::new(),
        },
        sources: Vec::new(),
        skipped: Vec::new(),
    };
    let mut roots = HashSet::new();
    if paths.is_empty() {
        return Err(Error::InvalidInput {
            reason: "nothing to send".into(),
        });
    }
    for path in paths {
        // The items the user named are followed if they are symlinks; nothing inside is.
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let name = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_owned()))
            .and_then(|n| n.into_string().ok())
            .ok_or_else(|| Error::InvalidInput {
                reason: format!("{} has no usable name", path.display()),
            })?;
        if !roots.insert(name.clone()) {
            return Err(Error::InvalidInput {
                reason: format!("two items are named {name:?}"),
            });
        }
        if meta.is_dir() {
            push(
                &mut offer,
                Entry::Dir {
                    path: name.clone(),
                    mode: meta.mode() & 0o7777,
                },
                None,
            )?;
            walk_dir(&mut offer, path, &name)?;
        } else if meta.is_file() {
            push_file(&mut offer, path, name, &meta)?;
        } else {
            return Err(Error::InvalidInput {
                reason: format!("{} is not a file or folder", path.display()),
            });
        }
    }
    Ok(offer)
}

fn push(offer: &mut Offer, entry: Entry, source: Option<Source>) -> Result<()> {
    if offer.manifest.entries.len() >= MAX_ENTRIES {
        return Err(Error::OfferTooLarge {
            reason: format!("more than {MAX_ENTRIES} files and folders"),
        });
    }
    offer.manifest.entries.push(entry);
    offer.sources.push(source);
    Ok(())
}

fn push_file(offer: &mut Offer, path: &Path, rel: String, meta: &std::fs::Metadata) -> Result<()> {
    let entry = Entry::File {
        path: rel,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
    };
    push(
        offer,
        entry,
        Some(Source {
            path: path.to_owned(),
            id: SourceId::of(meta),
        }),
    )
}

fn walk_dir(offer: &mut Offer, dir: &Path, rel: &str) -> Result<()> {
    let mut children = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for entry in rd {
                match entry {
                    Ok(e) => children.push(e),
                    Err(e) => offer.skipped.push((dir.to_owned(), e.to_string())),
                }
            }
        }
        Err(e) => {
            offer.skipped.push((dir.to_owned(), e.to_string()));
            return Ok(());
        }
    }
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let path = child.path();
        let Ok(name) = child.file_name().into_string() else {
            offer.skipped.push((path, "name is not valid UTF-8".into()));
            continue;
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                offer.skipped.push((path, e.to_string()));
                continue;
            }
        };
        let child_rel = format!("{rel}/{name}");
        if meta.file_type().is_symlink() {
            offer
                .skipped
                .push((path, "symbolic links are not sent".into()));
        } else if meta.is_dir() {
            push(
                offer,
                Entry::Dir {
                    path: child_rel.clone(),
                    mode: meta.mode() & 0o7777,
                },
                None,
            )?;
            walk_dir(offer, &path, &child_rel)?;
        } else if meta.is_file() {
            push_file(offer, &path, child_rel, &meta)?;
        } else {
            offer.skipped.push((path, "not a regular file".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_nested_and_empty_dirs_and_skips_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("photos");
        std::fs::create_dir_all(root.join("a/empty")).unwrap();
        std::fs::write(root.join("a/ü.txt"), b"hi").unwrap();
        std::fs::write(root.join("b.bin"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let offer = build(&[root]).unwrap();
        let paths: Vec<_> = offer
            .manifest
            .entries
            .iter()
            .map(|e| e.path().to_owned())
            .collect();
        assert_eq!(
            paths,
            [
                "photos",
                "photos/a",
                "photos/a/empty",
                "photos/a/ü.txt",
                "photos/b.bin"
            ]
        );
        assert_eq!(offer.skipped.len(), 1);
        assert_eq!(offer.manifest.total_bytes(), Some(2));
    }

    #[test]
    fn refuses_two_roots_with_one_name() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("x/f")).unwrap();
        std::fs::create_dir_all(t.path().join("y/f")).unwrap();
        let err = build(&[t.path().join("x/f"), t.path().join("y/f")]).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }));
    }
}

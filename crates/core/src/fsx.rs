//! The receiver's file system access: everything relative to one handle on the chosen
//! folder, never following a symlink, never replacing anything.
//!
//! Owns: openat/mkdirat with O_NOFOLLOW, O_CREAT|O_EXCL part files, fallocate,
//! renameat2(RENAME_NOREPLACE), directory fsync, free-space queries.
//! Must not: create anything outside the chosen folder or open a path from the wire as-is
//! (callers pass components already sanitised by `names`).

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use crate::{Error, Result};

/// Suffix of files still being received.
pub const PART_SUFFIX: &str = ".skiff-part";

/// The part file of the final name `name`. A name too long to take the suffix (the
/// sanitiser allows 255 bytes, as does the file system) keeps a prefix plus a digest of
/// the whole name, so that distinct long names never share a part file.
pub fn part_name(name: &str) -> String {
    const MAX: usize = 255;
    if name.len() + PART_SUFFIX.len() <= MAX {
        return format!("{name}{PART_SUFFIX}");
    }
    use sha2::Digest as _;
    let tag = hex::encode(&sha2::Sha256::digest(name.as_bytes())[..8]);
    let mut cut = MAX - PART_SUFFIX.len() - tag.len() - 1;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{tag}{PART_SUFFIX}", &name[..cut])
}

/// A handle on the destination folder.
pub struct DestDir {
    root: OwnedFd,
    path: PathBuf,
}

fn err(what: impl Into<String>, e: Errno) -> Error {
    Error::io(what, std::io::Error::from(e))
}

impl DestDir {
    /// Opens (creating if needed) the chosen folder and checks that it is writable.
    pub fn open(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied
                || e.raw_os_error() == Some(libc::EROFS)
            {
                Error::NotWritable {
                    path: path.to_owned(),
                }
            } else {
                Error::io(format!("creating {}", path.display()), e)
            }
        })?;
        let root = rfs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(format!("opening {}", path.display()), e))?;
        let vfs = rfs::fstatvfs(&root).map_err(|e| err("checking the download folder", e))?;
        let read_only = vfs.f_flag.contains(rfs::StatVfsMountFlags::RDONLY);
        if read_only
            || rfs::accessat(&root, ".", rfs::Access::WRITE_OK, rfs::AtFlags::empty()).is_err()
        {
            return Err(Error::NotWritable {
                path: path.to_owned(),
            });
        }
        Ok(Self {
            root,
            // Stored in the checkpoint: a relative path would resume elsewhere when
            // `skiff resume` runs from another working directory.
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Free bytes for this user, and the file system's size.
    pub fn space(&self) -> Result<(u64, u64)> {
        let v = rfs::fstatvfs(&self.root).map_err(|e| err("checking free space", e))?;
        Ok((
            v.f_bavail.saturating_mul(v.f_frsize),
            v.f_blocks.saturating_mul(v.f_frsize),
        ))
    }

    /// Space kept free: min(1 GiB, 5 % of the file system).
    pub fn reserve(&self) -> Result<u64> {
        let (_, size) = self.space()?;
        Ok((size / 20).min(1 << 30))
    }

    /// Opens the folder `comps` below the root, creating missing parts (0755) when `create`.
    pub fn dir(&self, comps: &[String], create: bool) -> Result<OwnedFd> {
        let mut cur = rfs::openat(
            &self.root,
            ".",
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err("opening the download folder", e))?;
        for c in comps {
            let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = match rfs::openat(&cur, c.as_str(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(&cur, c.as_str(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(err(format!("creating folder {c}"), e)),
                    }
                    rfs::openat(&cur, c.as_str(), flags, Mode::empty())
                        .map_err(|e| err(format!("opening folder {c}"), e))?
                }
                Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                    return Err(Error::BadOffer {
                        reason: format!(
                            "{c:?} in the download folder is not a folder (or is a symlink)"
                        ),
                    })
                }
                Err(e) => return Err(err(format!("opening folder {c}"), e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Creates a new, empty folder; fails if anything exists under that name.
    pub fn mkdir_new(dir: &OwnedFd, name: &str) -> Result<bool> {
        match rfs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(err(format!("creating folder {name}"), e)),
        }
    }

    /// Whether anything (file, folder, symlink) exists under `name`.
    pub fn exists(dir: &OwnedFd, name: &str) -> bool {
        rfs::statat(dir, name, rfs::AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// Creates a new part file (0600); fails if the name exists.
    pub fn create_part(dir: &OwnedFd, name: &str) -> Result<File> {
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(dir, name, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| err(format!("creating {name}"), e))?;
        Ok(File::from(fd))
    }

    /// Opens an existing part file, `None` if it is gone.
    pub fn open_part(dir: &OwnedFd, name: &str) -> Result<Option<File>> {
        match rfs::openat(
            dir,
            name,
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                let st = rfs::fstat(&fd).map_err(|e| err(format!("checking {name}"), e))?;
                if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
                    return Err(Error::BadOffer {
                        reason: format!("{name} is not a regular file"),
                    });
                }
                Ok(Some(File::from(fd)))
            }
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(err(format!("opening {name}"), e)),
        }
    }

    /// Reserves `len` bytes for a part file (disk full shows here, not mid-write).
    pub fn preallocate(file: &File, len: u64, name: &str) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        match rfs::fallocate(file.as_fd(), rfs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            Err(Errno::NOSPC) => Err(Error::DiskFull {
                path: PathBuf::from(name),
            }),
            // Some file systems cannot preallocate; the size still has to be right.
            Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => file
                .set_len(len)
                .map_err(|e| Error::io(format!("sizing {name}"), e)),
            Err(e) => Err(err(format!("preallocating {name}"), e)),
        }
    }

    /// Renames `from` to `to` in `dir` without replacing; `false` if `to` exists.
    pub fn rename_noreplace(dir: &OwnedFd, from: &str, to: &str) -> Result<bool> {
        match rfs::renameat_with(dir, from, dir, to, rfs::RenameFlags::NOREPLACE) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(err(format!("renaming {from}"), e)),
        }
    }

    pub fn fsync_dir(dir: &OwnedFd) -> Result<()> {
        rfs::fsync(dir).map_err(|e| err("syncing a folder", e))
    }

    /// Removes a part file (after a failed or discarded transfer).
    pub fn remove(dir: &OwnedFd, name: &str) {
        let _ = rfs::unlinkat(dir, name, rfs::AtFlags::empty());
    }
}

/// Sets a received file's mode (never setuid/setgid, never group/world-writable) and mtime.
pub fn finish_metadata(file: &File, mode: u32, mtime: i64) {
    let _ = rfs::fchmod(file, Mode::from_raw_mode((mode & 0o755) | 0o600));
    let t = rfs::Timestamps {
        last_access: rfs::Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
        last_modification: rfs::Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    };
    let _ = rfs::futimens(file, &t);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_follows_symlinks_or_replaces() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("evil")).unwrap();
        let d = DestDir::open(t.path()).unwrap();
        assert!(d.dir(&["evil".into()], true).is_err());
        let root = d.dir(&[], false).unwrap();
        let f = DestDir::create_part(&root, "a.skiff-part").unwrap();
        DestDir::preallocate(&f, 10, "a").unwrap();
        assert!(DestDir::create_part(&root, "a.skiff-part").is_err());
        std::fs::write(t.path().join("a"), b"old").unwrap();
        assert!(!DestDir::rename_noreplace(&root, "a.skiff-part", "a").unwrap());
        assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"old");
        assert!(DestDir::rename_noreplace(&root, "a.skiff-part", "b").unwrap());
        assert_eq!(std::fs::metadata(t.path().join("b")).unwrap().len(), 10);
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}

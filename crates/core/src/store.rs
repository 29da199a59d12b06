//! Checkpoint store: the SQLite record of each transfer and of which chunks are safe.
//!
//! Owns: the schema, and the rule that a receiver's chunk row is committed only after its
//! bytes were fdatasync'ed (callers sync first; see `recv`). WAL, synchronous=NORMAL.
//! A database that cannot be opened is moved aside and replaced; the engine still starts.
//! Must not: touch files other than the database, or run on an async worker thread
//! (async callers go through [`Store::call`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use crate::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS transfers(
  id TEXT PRIMARY KEY,
  direction TEXT NOT NULL,          -- 'send' | 'receive'
  state TEXT NOT NULL,
  peer_addr TEXT NOT NULL,          -- sender: listen address; receiver: address to dial
  signal_url TEXT,                  -- signaling server where both ends meet to resume
  resume_secret BLOB,
  manifest TEXT NOT NULL,
  dest_dir TEXT,
  peer_name TEXT NOT NULL DEFAULT '',
  total_bytes INTEGER NOT NULL,
  path_kind TEXT,
  error_kind TEXT,
  error TEXT,
  created INTEGER NOT NULL,
  updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS files(
  transfer TEXT NOT NULL,
  idx INTEGER NOT NULL,
  done INTEGER NOT NULL DEFAULT 0,
  sha256 TEXT,
  src_path TEXT,                    -- sender: the local source
  src_size INTEGER, src_mtime INTEGER, src_dev INTEGER, src_ino INTEGER,
  local_dir TEXT,                   -- receiver: sanitised folder, '/'-joined, relative to dest
  local_name TEXT,                  -- receiver: final file name in that folder
  PRIMARY KEY(transfer, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trusted(
  device_id TEXT PRIMARY KEY,       -- the device's public key, hex
  name TEXT NOT NULL,
  added INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks(
  transfer TEXT NOT NULL,
  file INTEGER NOT NULL,
  idx INTEGER NOT NULL,
  sha256 BLOB NOT NULL,
  PRIMARY KEY(transfer, file, idx)
) WITHOUT ROWID;
";

/// Direction of a transfer as seen from this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Send,
    Receive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Send => "send",
            Direction::Receive => "receive",
        }
    }
}

/// One row of `transfers`.
#[derive(Debug, Clone)]
pub struct TransferRow {
    pub id: String,
    pub direction: Direction,
    pub state: String,
    pub peer_addr: String,
    /// Signaling server both ends use to meet again; `None` in direct mode.
    pub signal_url: Option<String>,
    pub resume_secret: Option<[u8; 32]>,
    pub manifest: String,
    pub dest_dir: Option<String>,
    pub peer_name: String,
    pub total_bytes: u64,
    pub path_kind: Option<String>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub created: i64,
    pub updated: i64,
}

/// A sender's file row.
#[derive(Debug, Clone)]
pub struct SendFileRow {
    pub idx: u32,
    pub done: bool,
    pub src_path: PathBuf,
    pub id: crate::walk::SourceId,
}

/// A receiver's file row.
#[derive(Debug, Clone)]
pub struct RecvFileRow {
    pub idx: u32,
    pub done: bool,
    pub sha256: Option<String>,
    pub local_dir: String,
    pub local_name: String,
}

/// Shared handle to the database.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    // Databases from before the signaling column.
    if conn
        .prepare("SELECT signal_url FROM transfers LIMIT 0")
        .is_err()
    {
        conn.execute_batch("ALTER TABLE transfers ADD COLUMN signal_url TEXT")?;
    }
    // Fails on a file that is not a database.
    conn.query_row("SELECT count(*) FROM transfers", [], |r| r.get::<_, i64>(0))?;
    Ok(conn)
}

impl Store {
    /// Opens (or creates) `skiff.db` in `dir`. Returns the store and, if the old database
    /// was unreadable, where it was moved.
    pub fn open(dir: &Path) -> Result<(Self, Option<PathBuf>)> {
        crate::config::ensure_private_dir(dir)?;
        let path = dir.join("skiff.db");
        let mut moved = None;
        let conn = match open_conn(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    "checkpoint database {} is unreadable ({e}); starting a new one",
                    path.display()
                );
                let aside = dir.join(format!("skiff.db.corrupt-{}", now()));
                std::fs::rename(&path, &aside)
                    .map_err(|e| Error::io("moving the damaged database aside", e))?;
                for ext in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(dir.join(format!("skiff.db{ext}")));
                }
                moved = Some(aside);
                open_conn(&path)?
            }
        };
        for ext in ["", "-wal", "-shm"] {
            crate::config::make_private_file(&dir.join(format!("skiff.db{ext}")));
        }
        Ok((
            Self {
                conn: Arc::new(Mutex::new(conn)),
                path,
            },
            moved,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Locks the connection (blocking contexts only).
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        match self.conn.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Runs `f` on the blocking pool.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| Error::protocol("store task failed"))?
    }

    pub fn insert_transfer(&self, t: &TransferRow) -> Result<()> {
        self.lock().execute(
            "INSERT INTO transfers(id, direction, state, peer_addr, resume_secret, manifest, dest_dir,
               peer_name, total_bytes, path_kind, created, updated, signal_url)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12)",
            params![
                t.id,
                t.direction.as_str(),
                t.state,
                t.peer_addr,
                t.resume_secret.map(|s| s.to_vec()),
                t.manifest,
                t.dest_dir,
                t.peer_name,
                t.total_bytes as i64,
                t.path_kind,
                now(),
                t.signal_url,
            ],
        )?;
        Ok(())
    }

    pub fn set_state(&self, id: &str, state: &str, error: Option<(&str, &str)>) -> Result<()> {
        self.lock().execute(
            "UPDATE transfers SET state = ?2, error_kind = ?3, error = ?4, updated = ?5 WHERE id = ?1",
            params![id, state, error.map(|e| e.0), error.map(|e| e.1), now()],
        )?;
        Ok(())
    }

    pub fn set_session(&self, id: &str, resume_secret: &[u8; 32], path_kind: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE transfers SET resume_secret = ?2, path_kind = ?3, updated = ?4 WHERE id = ?1",
            params![id, resume_secret.to_vec(), path_kind, now()],
        )?;
        Ok(())
    }

    /// Pins a device (peer-list sends): its key is then expected for its name.
    pub fn trust(&self, device_id: &str, name: &str) -> Result<()> {
        self.lock().execute(
            "INSERT INTO trusted(device_id, name, added) VALUES (?1, ?2, ?3)
             ON CONFLICT(device_id) DO UPDATE SET name = excluded.name",
            params![device_id, name, now()],
        )?;
        Ok(())
    }

    /// Unpins a device; true if it was pinned.
    pub fn forget(&self, device_id: &str) -> Result<bool> {
        Ok(self.lock().execute(
            "DELETE FROM trusted WHERE device_id = ?1",
            params![device_id],
        )? > 0)
    }

    /// Pinned devices as (device id, name).
    pub fn trusted(&self) -> Result<Vec<(String, String)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT device_id, name FROM trusted ORDER BY name")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The path the latest session took (`lan`, `direct`, `turn-udp`, …).
    pub fn set_path_kind(&self, id: &str, path_kind: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE transfers SET path_kind = ?2, updated = ?3 WHERE id = ?1",
            params![id, path_kind, now()],
        )?;
        Ok(())
    }

    pub fn set_peer_name(&self, id: &str, name: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE transfers SET peer_name = ?2 WHERE id = ?1",
            params![id, name],
        )?;
        Ok(())
    }

    pub fn transfer(&self, id: &str) -> Result<Option<TransferRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!("{SELECT_TRANSFER} WHERE id = ?1"),
                [id],
                row_to_transfer,
            )
            .optional()?)
    }

    pub fn transfers(&self) -> Result<Vec<TransferRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!("{SELECT_TRANSFER} ORDER BY created, id"))?;
        let rows = stmt
            .query_map([], row_to_transfer)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Finds the transfer of this direction whose rendezvous id matches.
    pub fn by_rendezvous(
        &self,
        direction: Direction,
        rendezvous: &[u8; 32],
    ) -> Result<Option<TransferRow>> {
        Ok(self
            .transfers()?
            .into_iter()
            .filter(|t| t.direction == direction)
            .find(|t| {
                t.resume_secret
                    .is_some_and(|s| crate::crypto::rendezvous(&s) == *rendezvous)
            }))
    }

    pub fn insert_send_files(&self, id: &str, files: &[(u32, crate::walk::Source)]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO files(transfer, idx, src_path, src_size, src_mtime, src_dev, src_ino)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (idx, s) in files {
                stmt.execute(params![
                    id,
                    idx,
                    s.path.to_string_lossy(),
                    s.id.size as i64,
                    s.id.mtime_ns,
                    s.id.dev as i64,
                    s.id.ino as i64
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn send_files(&self, id: &str) -> Result<Vec<SendFileRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT idx, done, src_path, src_size, src_mtime, src_dev, src_ino FROM files WHERE transfer = ?1 ORDER BY idx",
        )?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(SendFileRow {
                    idx: r.get(0)?,
                    done: r.get(1)?,
                    src_path: PathBuf::from(r.get::<_, String>(2)?),
                    id: crate::walk::SourceId {
                        size: r.get::<_, i64>(3)? as u64,
                        mtime_ns: r.get(4)?,
                        dev: r.get::<_, i64>(5)? as u64,
                        ino: r.get::<_, i64>(6)? as u64,
                    },
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn insert_recv_files(&self, id: &str, files: &[(u32, String, String)]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO files(transfer, idx, local_dir, local_name) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (idx, dir, name) in files {
                stmt.execute(params![id, idx, dir, name])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn recv_files(&self, id: &str) -> Result<Vec<RecvFileRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT idx, done, sha256, local_dir, local_name FROM files WHERE transfer = ?1 ORDER BY idx",
        )?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(RecvFileRow {
                    idx: r.get(0)?,
                    done: r.get(1)?,
                    sha256: r.get(2)?,
                    local_dir: r.get(3)?,
                    local_name: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Records chunks (receiver: verified and synced; sender: digest cache) in one commit.
    pub fn put_chunks(&self, id: &str, chunks: &[(u32, u64, [u8; 32])]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("INSERT OR REPLACE INTO chunks(transfer, file, idx, sha256) VALUES (?1, ?2, ?3, ?4)")?;
            for (file, idx, sha) in chunks {
                stmt.execute(params![id, file, *idx as i64, &sha[..]])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn chunks(&self, id: &str, file: u32) -> Result<Vec<(u64, [u8; 32])>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT idx, sha256 FROM chunks WHERE transfer = ?1 AND file = ?2 ORDER BY idx",
        )?;
        let mut out = Vec::new();
        let mut rows = stmt.query(params![id, file])?;
        while let Some(r) = rows.next()? {
            let idx: i64 = r.get(0)?;
            let sha: Vec<u8> = r.get(1)?;
            if let Ok(sha) = <[u8; 32]>::try_from(sha.as_slice()) {
                out.push((idx as u64, sha));
            }
        }
        Ok(out)
    }

    pub fn drop_chunks(&self, id: &str, file: u32, idxs: &[u64]) -> Result<()> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("DELETE FROM chunks WHERE transfer = ?1 AND file = ?2 AND idx = ?3")?;
        for i in idxs {
            stmt.execute(params![id, file, *i as i64])?;
        }
        Ok(())
    }

    pub fn clear_chunks(&self, id: &str, file: u32) -> Result<()> {
        self.lock().execute(
            "DELETE FROM chunks WHERE transfer = ?1 AND file = ?2",
            params![id, file],
        )?;
        Ok(())
    }

    /// Marks a file finished (receiver: renamed into place under `local_name`).
    pub fn file_done(
        &self,
        id: &str,
        file: u32,
        sha256: Option<&str>,
        local_name: Option<&str>,
    ) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE files SET done = 1, sha256 = coalesce(?3, sha256), local_name = coalesce(?4, local_name) WHERE transfer = ?1 AND idx = ?2",
            params![id, file, sha256, local_name],
        )?;
        // The chunk rows of a finished file are no longer needed.
        tx.execute(
            "DELETE FROM chunks WHERE transfer = ?1 AND file = ?2",
            params![id, file],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Bytes a receiver holds safely (finished files plus committed chunks), for `list`.
    pub fn held_chunks(&self, id: &str) -> Result<u64> {
        Ok(self.lock().query_row(
            "SELECT count(*) FROM chunks WHERE transfer = ?1",
            [id],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    pub fn delete_transfer(&self, id: &str) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for table in [
            "chunks WHERE transfer",
            "files WHERE transfer",
            "transfers WHERE id",
        ] {
            tx.execute(&format!("DELETE FROM {table} = ?1"), [id])?;
        }
        tx.commit()?;
        Ok(())
    }
}

const SELECT_TRANSFER: &str =
    "SELECT id, direction, state, peer_addr, resume_secret, manifest, dest_dir, peer_name,
    total_bytes, path_kind, error_kind, error, created, updated, signal_url FROM transfers";

fn row_to_transfer(r: &rusqlite::Row<'_>) -> rusqlite::Result<TransferRow> {
    let direction: String = r.get(1)?;
    let secret: Option<Vec<u8>> = r.get(4)?;
    Ok(TransferRow {
        id: r.get(0)?,
        direction: if direction == "send" {
            Direction::Send
        } else {
            Direction::Receive
        },
        state: r.get(2)?,
        peer_addr: r.get(3)?,
        signal_url: r.get(14)?,
        resume_secret: secret.and_then(|s| <[u8; 32]>::try_from(s.as_slice()).ok()),
        manifest: r.get(5)?,
        dest_dir: r.get(6)?,
        peer_name: r.get(7)?,
        total_bytes: r.get::<_, i64>(8)? as u64,
        path_kind: r.get(9)?,
        error_kind: r.get(10)?,
        error: r.get(11)?,
        created: r.get(12)?,
        updated: r.get(13)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> TransferRow {
        TransferRow {
            id: id.into(),
            direction: Direction::Receive,
            state: "transferring".into(),
            peer_addr: "127.0.0.1:1".into(),
            signal_url: None,
            resume_secret: Some([3; 32]),
            manifest: "{}".into(),
            dest_dir: Some("/tmp".into()),
            peer_name: String::new(),
            total_bytes: 10,
            path_kind: None,
            error_kind: None,
            error: None,
            created: 0,
            updated: 0,
        }
    }

    #[test]
    fn chunks_round_trip_and_finishing_a_file_drops_them() {
        let t = tempfile::tempdir().unwrap();
        let (s, moved) = Store::open(t.path()).unwrap();
        assert!(moved.is_none());
        s.insert_transfer(&row("t1")).unwrap();
        s.insert_recv_files("t1", &[(0, "".into(), "a.txt".into())])
            .unwrap();
        s.put_chunks("t1", &[(0, 0, [1; 32]), (0, 2, [2; 32])])
            .unwrap();
        assert_eq!(s.chunks("t1", 0).unwrap(), vec![(0, [1; 32]), (2, [2; 32])]);
        s.file_done("t1", 0, Some("ab"), Some("a (1).txt")).unwrap();
        assert!(s.chunks("t1", 0).unwrap().is_empty());
        let f = &s.recv_files("t1").unwrap()[0];
        assert!(f.done);
        assert_eq!(f.local_name, "a (1).txt");
        let found = s
            .by_rendezvous(Direction::Receive, &crate::crypto::rendezvous(&[3; 32]))
            .unwrap();
        assert_eq!(found.unwrap().id, "t1");
    }

    #[test]
    fn a_damaged_database_is_moved_aside() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("skiff.db"), vec![0xA5u8; 8192]).unwrap();
        let (s, moved) = Store::open(t.path()).unwrap();
        assert!(moved.unwrap().exists());
        assert!(s.transfers().unwrap().is_empty());
    }
}

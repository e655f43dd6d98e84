//! The server's state folder: each torrent's `.torrent`, a small JSON record of what the user
//! chose for it, its fast-resume record, and the session's own settings.
//!
//! ```text
//! STATE/server.lock                 held while a server runs on this folder
//! STATE/session.json                {"download_limit": 0, "upload_limit": 0}
//! STATE/torrents/<hash>.torrent     the metainfo as added
//! STATE/torrents/<hash>.json        the record below
//! STATE/resume/<hash>.resume        the fast-resume record (written by the library)
//! ```
//!
//! Every write goes to a temporary file that is then renamed over the old one, so a crash
//! leaves either the old record or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_engine::InfoHash;

/// The largest record or settings file read (a record is a few hundred bytes; a torrent of
/// many files lists one flag per file).
const MAX_RECORD: u64 = 4 * 1024 * 1024;

/// What the user chose for one torrent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The download folder.
    pub folder: PathBuf,
    /// Whether it is paused.
    #[serde(default)]
    pub paused: bool,
    /// Which files are wanted, one flag per file (`None`: all of them).
    #[serde(default)]
    pub wanted: Option<Vec<bool>>,
    /// Whether pieces are fetched in order.
    #[serde(default)]
    pub sequential: bool,
    /// Download limit in bytes/s (0: none).
    #[serde(default)]
    pub download_limit: u64,
    /// Upload limit in bytes/s (0: none).
    #[serde(default)]
    pub upload_limit: u64,
    /// When it was added, in seconds since the Unix epoch (the list's order).
    #[serde(default)]
    pub added: u64,
}

/// The session's settings kept across restarts.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    /// Download limit for the whole session in bytes/s (0: none).
    #[serde(default)]
    pub download_limit: u64,
    /// Upload limit for the whole session in bytes/s (0: none).
    #[serde(default)]
    pub upload_limit: u64,
}

/// The state folder.
#[derive(Clone, Debug)]
pub struct StateDir {
    /// Its root.
    root: PathBuf,
}

/// A torrent found in the state folder.
#[derive(Debug)]
pub struct Saved {
    /// The info hash its file names give.
    pub info_hash: InfoHash,
    /// The `.torrent` bytes.
    pub torrent: Vec<u8>,
    /// Its record.
    pub record: Record,
}

impl StateDir {
    /// Opens (creating) the folder and locks it; the returned file holds the lock.
    pub fn open(root: PathBuf) -> Result<(Self, std::fs::File), String> {
        for d in [root.clone(), root.join("torrents"), root.join("resume")] {
            std::fs::create_dir_all(&d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let lock_path = root.join("server.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(format!(
                    "another shoal server is running on the state folder {}",
                    root.display()
                ))
            }
            Err(e) => return Err(format!("cannot lock {}: {e}", lock_path.display())),
        }
        Ok((Self { root }, lock))
    }

    /// Its root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the fast-resume record of a torrent is kept.
    pub fn resume_path(&self, h: &InfoHash) -> PathBuf {
        self.root.join("resume").join(format!("{h}.resume"))
    }

    fn torrent_path(&self, h: &InfoHash) -> PathBuf {
        self.root.join("torrents").join(format!("{h}.torrent"))
    }

    fn record_path(&self, h: &InfoHash) -> PathBuf {
        self.root.join("torrents").join(format!("{h}.json"))
    }

    /// Saves a newly added torrent: its `.torrent` and its record.
    pub fn add(&self, h: &InfoHash, torrent: &[u8], record: &Record) -> Result<(), String> {
        write_atomic(&self.torrent_path(h), torrent)?;
        self.save(h, record)
    }

    /// Saves a torrent's record.
    pub fn save(&self, h: &InfoHash, record: &Record) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
        write_atomic(&self.record_path(h), &bytes)
    }

    /// Forgets a torrent: its `.torrent`, record and resume record.
    pub fn remove(&self, h: &InfoHash) {
        for p in [
            self.record_path(h),
            self.torrent_path(h),
            self.resume_path(h),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("cannot delete {}: {e}", p.display()),
            }
        }
    }

    /// Every torrent saved, oldest first. A record that cannot be read is said and skipped
    /// (its files stay, for the user to look at).
    pub fn load(&self) -> Vec<Saved> {
        let dir = self.root.join("torrents");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let Some(h) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(InfoHash::from_hex)
            else {
                continue;
            };
            let loaded = read_small(&path).and_then(|bytes| {
                let record: Record = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let torrent = std::fs::read(self.torrent_path(&h))
                    .map_err(|e| format!("{}: {e}", self.torrent_path(&h).display()))?;
                Ok(Saved {
                    info_hash: h,
                    torrent,
                    record,
                })
            });
            match loaded {
                Ok(s) => out.push(s),
                Err(e) => log::warn!("skipping a saved torrent: {e}"),
            }
        }
        out.sort_by_key(|s| (s.record.added, s.info_hash.to_string()));
        out
    }

    /// The session's settings (defaults when none were saved).
    pub fn session(&self) -> SessionRecord {
        let path = self.root.join("session.json");
        read_small(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves the session's settings.
    pub fn save_session(&self, s: &SessionRecord) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(s).map_err(|e| e.to_string())?;
        write_atomic(&self.root.join("session.json"), &bytes)
    }
}

/// Reads a file of at most [`MAX_RECORD`] bytes.
fn read_small(path: &Path) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > MAX_RECORD {
        return Err(format!(
            "{}: larger than {MAX_RECORD} bytes",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `bytes` to a temporary file next to `path`, flushes it and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|x| x.to_str()).unwrap_or("")
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The default state folder: `$XDG_STATE_HOME/shoal`, else `~/.local/state/shoal`.
pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("shoal");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(home).join(".local/state/shoal");
    }
    PathBuf::from(".shoal-state")
}

/// The default download folder: `$XDG_DOWNLOAD_DIR`, else `~/Downloads`.
pub fn default_download_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DOWNLOAD_DIR").filter(|x| !x.is_empty()) {
        return PathBuf::from(x);
    }
    if let Some(home) = std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(home).join("Downloads");
    }
    PathBuf::from("downloads")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("shoal-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (state, lock) = StateDir::open(dir.clone()).unwrap();
        assert!(
            StateDir::open(dir.clone()).is_err(),
            "a second server is refused"
        );
        let h = InfoHash::from_hex("0123456789abcdef0123456789abcdef01234567").unwrap();
        let rec = Record {
            folder: "/tmp/x".into(),
            paused: true,
            wanted: Some(vec![true, false]),
            sequential: false,
            download_limit: 5,
            upload_limit: 0,
            added: 7,
        };
        state.add(&h, b"d4:infode", &rec).unwrap();
        let loaded = state.load();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].record, rec);
        assert_eq!(loaded[0].torrent, b"d4:infode");
        state.remove(&h);
        assert!(state.load().is_empty());
        drop(lock);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

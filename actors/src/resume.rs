//! Fast resume: which pieces were verified, saved atomically next to the download, and trusted
//! on the next start only if every file still has the size and modification time it had when
//! the record was written.
//!
//! Any write after the record (a process killed with `-9` mid-download, a user editing a file)
//! changes a modification time, and the torrent falls back to checking every piece. Either way
//! no verified piece is lost: the record only saves the time of a full check.
//!
//! The format is a few lines of text:
//!
//! ```text
//! shoal-resume 1
//! info_hash 0123456789abcdef0123456789abcdef01234567
//! pieces 1234 <hex of the bitfield>
//! file <length> <mtime seconds> <mtime nanoseconds>     (one line per file, torrent order)
//! ```

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use shoal_engine::bitfield::Bitfield;
use shoal_engine::InfoHash;

/// The first line of every record.
const MAGIC: &str = "shoal-resume 1";

/// The largest record we read (a bitfield of 2^24 pieces is 4 MiB of hex).
const MAX_RECORD: u64 = 16 * 1024 * 1024;

/// One file's size and modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    secs: u64,
    nanos: u32,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(Stamp {
        len: meta.len(),
        secs: mtime.as_secs(),
        nanos: mtime.subsec_nanos(),
    })
}

/// Writes the record for `have` atomically: a temporary file, flushed, renamed over the old one.
pub fn save(
    record: &Path,
    info_hash: &InfoHash,
    have: &Bitfield,
    files: &[PathBuf],
) -> io::Result<()> {
    prepare(record, info_hash, have, files)?.commit()
}

/// A record written and flushed to its temporary file, not yet in place: [`Prepared::commit`]
/// renames it over the old record, [`Prepared::discard`] removes it.
///
/// The split lets the record be written while the data it describes is still being flushed:
/// the torrent commits it only once that flush has returned, so a record in place never
/// claims a piece whose bytes are not durable.
#[derive(Debug)]
#[must_use = "a prepared record is not in place until committed"]
pub struct Prepared {
    /// The temporary file, flushed.
    tmp: PathBuf,
    /// Where the record goes.
    record: PathBuf,
}

/// Writes the record for `have` to a temporary file next to `record` and flushes it. The
/// files' sizes and modification times are read now: call it after the last write to them.
pub fn prepare(
    record: &Path,
    info_hash: &InfoHash,
    have: &Bitfield,
    files: &[PathBuf],
) -> io::Result<Prepared> {
    let mut text = String::with_capacity(64 + have.as_bytes().len() * 2 + files.len() * 40);
    text.push_str(MAGIC);
    text.push('\n');
    text.push_str(&format!("info_hash {info_hash}\n"));
    text.push_str(&format!("pieces {} ", have.len()));
    for b in have.as_bytes() {
        text.push_str(&format!("{b:02x}"));
    }
    text.push('\n');
    for f in files {
        let s = stamp(f).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is missing", f.display()),
            )
        })?;
        text.push_str(&format!("file {} {} {}\n", s.len, s.secs, s.nanos));
    }
    if let Some(parent) = record.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = record.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    Ok(Prepared {
        tmp,
        record: record.to_path_buf(),
    })
}

impl Prepared {
    /// Renames the record into place and makes the rename durable.
    pub fn commit(self) -> io::Result<()> {
        std::fs::rename(&self.tmp, &self.record)?;
        if let Some(parent) = self.record.parent() {
            // Make the rename itself durable.
            if let Ok(dir) = File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }

    /// Removes the temporary file: the data it describes could not be flushed.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Reads the record and returns its pieces if it belongs to this torrent and every file is
/// exactly as it was when the record was written; `None` means "check every piece".
pub fn load(
    record: &Path,
    info_hash: &InfoHash,
    num_pieces: u32,
    files: &[PathBuf],
) -> Option<Bitfield> {
    let meta = std::fs::metadata(record).ok()?;
    if meta.len() > MAX_RECORD {
        return None;
    }
    let text = std::fs::read_to_string(record).ok()?;
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let hash = lines.next()?.strip_prefix("info_hash ")?;
    if InfoHash::from_hex(hash)? != *info_hash {
        return None;
    }
    let mut pieces = lines.next()?.strip_prefix("pieces ")?.split(' ');
    let n: u32 = pieces.next()?.parse().ok()?;
    let hex = pieces.next().unwrap_or("");
    if n != num_pieces || hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let have = Bitfield::from_bytes(&bytes, n).ok()?;
    let mut count = 0;
    for (line, path) in lines.zip(files) {
        let mut parts = line.strip_prefix("file ")?.split(' ');
        let recorded = Stamp {
            len: parts.next()?.parse().ok()?,
            secs: parts.next()?.parse().ok()?,
            nanos: parts.next()?.parse().ok()?,
        };
        if stamp(path)? != recorded {
            return None;
        }
        count += 1;
    }
    (count == files.len()).then_some(have)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_invalidation() {
        let dir = std::env::temp_dir().join(format!("shoal-resume-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = vec![dir.join("a"), dir.join("b")];
        std::fs::write(&files[0], b"hello").unwrap();
        std::fs::write(&files[1], b"").unwrap();
        let hash = InfoHash([7; 20]);
        let mut have = Bitfield::new(10);
        have.set(0);
        have.set(9);
        let record = dir.join("r.resume");
        save(&record, &hash, &have, &files).unwrap();
        assert_eq!(load(&record, &hash, 10, &files), Some(have.clone()));
        // Wrong torrent, wrong piece count: ignored.
        assert_eq!(load(&record, &InfoHash([8; 20]), 10, &files), None);
        assert_eq!(load(&record, &hash, 11, &files), None);
        // A write after the record: ignored.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&files[0], b"hellp").unwrap();
        assert_eq!(load(&record, &hash, 10, &files), None);
        // Garbage: ignored, no panic.
        for junk in [
            "",
            "shoal-resume 1\n",
            "shoal-resume 1\ninfo_hash zz\n",
            "shoal-resume 1\ninfo_hash 0707070707070707070707070707070707070707\npieces 10 0\n",
        ] {
            std::fs::write(&record, junk).unwrap();
            assert_eq!(load(&record, &hash, 10, &files), None, "{junk:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_prepared_record_is_in_place_only_once_committed() {
        let dir = std::env::temp_dir().join(format!("shoal-resume-prep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = vec![dir.join("a")];
        std::fs::write(&files[0], b"data").unwrap();
        let hash = InfoHash([3; 20]);
        let record = dir.join("r.resume");
        let mut old = Bitfield::new(4);
        old.set(1);
        save(&record, &hash, &old, &files).unwrap();
        let mut new = Bitfield::new(4);
        new.set(1);
        new.set(2);
        // Prepared, not committed (the flush it waited for failed): the old record stands.
        let p = prepare(&record, &hash, &new, &files).unwrap();
        assert_eq!(load(&record, &hash, 4, &files), Some(old.clone()));
        p.discard();
        assert!(!record.with_extension("tmp").exists());
        assert_eq!(load(&record, &hash, 4, &files), Some(old));
        // Committed: the new one.
        prepare(&record, &hash, &new, &files)
            .unwrap()
            .commit()
            .unwrap();
        assert_eq!(load(&record, &hash, 4, &files), Some(new));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

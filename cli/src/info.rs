//! `shoal info`: show what a `.torrent` file holds, for people or (`--json`) for programs.
//!
//! # The `--json` object
//! One object with exactly these keys, always present (absent values are `null`):
//! - `name` (string), `info_hash` (40 lowercase hex digits: the SHA-1 of the info dictionary,
//!   or for a v2-only torrent its truncated v2 hash, which is what the swarm knows it by),
//!   `info_hash_v2` (64 hex digits, or null for a v1 torrent), `meta_version` (`"v1"`, `"v2"`
//!   or `"hybrid"`, BEP 52), `piece_length` (bytes), `piece_count`, `total_length` (bytes,
//!   pad files included), `private` (bool), `multi_file` (bool);
//! - `files`: list of `{ "path": "name/dir/file", "components": ["name", "dir", "file"],
//!   "length": bytes, "pad": bool }` in torrent order, BEP 47 pad files included (`pad`
//!   true); the path starts with the torrent name (a single-file torrent's one path is its
//!   name) and is joined with `/`;
//! - `trackers`: list of tiers, each a list of URLs (`announce-list`, else `[[announce]]`,
//!   else `[]`);
//! - `comment`, `created_by` (strings or null), `creation_date` (Unix seconds or null).

use std::io::Read;
use std::path::PathBuf;

use serde::Serialize;
use shoal_engine::metainfo::{MetaVersion, Metainfo, MAX_METAINFO_LEN};

use crate::display::{count, printable};
use crate::{outln, CliResult};

/// Arguments of `shoal info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .torrent file to read.
    pub file: PathBuf,
    /// Print one JSON object with fixed keys instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The `--json` output; see the module documentation.
#[derive(Debug, Serialize)]
struct JsonInfo<'a> {
    name: &'a str,
    info_hash: String,
    info_hash_v2: Option<String>,
    meta_version: &'static str,
    piece_length: u32,
    piece_count: usize,
    total_length: u64,
    private: bool,
    multi_file: bool,
    files: Vec<JsonFile<'a>>,
    trackers: Vec<Vec<String>>,
    comment: Option<&'a str>,
    created_by: Option<&'a str>,
    creation_date: Option<i64>,
}

/// One file in the `--json` output.
#[derive(Debug, Serialize)]
struct JsonFile<'a> {
    path: String,
    components: &'a [String],
    length: u64,
    pad: bool,
}

/// `1536` → `1.5 KiB`; exact bytes below 1 KiB.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (proleptic Gregorian calendar).
pub fn utc_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days to civil date: Howard Hinnant's algorithm, exact over the whole i64 day range
    // we can reach here (i128 keeps the arithmetic from overflowing).
    let z = i128::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Reads a `.torrent` file, refusing one too large to be real before reading it all.
pub fn read_torrent(path: &PathBuf) -> Result<Metainfo, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_METAINFO_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Metainfo::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The BEP 52 version of a torrent as `shoal info` names it.
fn version_name(v: MetaVersion) -> &'static str {
    match v {
        MetaVersion::V1 => "v1",
        MetaVersion::V2 => "v2",
        MetaVersion::Hybrid => "hybrid",
    }
}

/// 64 lowercase hex digits.
fn hex32(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `shoal info`.
pub fn run(args: Args) -> CliResult {
    let meta = read_torrent(&args.file)?;
    let info = &meta.info;
    if args.json {
        let out = JsonInfo {
            name: &info.name,
            info_hash: meta.info_hash.to_string(),
            info_hash_v2: meta.info_hash_v2.as_ref().map(hex32),
            meta_version: version_name(info.version),
            piece_length: info.piece_length,
            piece_count: info.lengths.num_pieces() as usize,
            total_length: meta.total_length(),
            private: info.private,
            multi_file: info.multi_file,
            files: info
                .files
                .iter()
                .map(|f| JsonFile {
                    path: f.path.join("/"),
                    components: &f.path,
                    length: f.length,
                    pad: f.pad,
                })
                .collect(),
            trackers: meta.tiers(),
            comment: meta.comment.as_deref(),
            created_by: meta.created_by.as_deref(),
            creation_date: meta.creation_date,
        };
        let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        outln!("{text}")?;
        return Ok(());
    }
    let total = meta.total_length();
    // Every string from the torrent goes through `printable`: a name is not allowed to move
    // the cursor, change colours or ring the bell.
    outln!("name:          {}", printable(&info.name))?;
    match (info.version, &meta.info_hash_v2) {
        (MetaVersion::V1, _) | (_, None) => outln!("info hash:     {}", meta.info_hash)?,
        (MetaVersion::Hybrid, Some(v2)) => {
            outln!("meta version:  hybrid (v1 and v2)")?;
            outln!("info hash:     {} (v1)", meta.info_hash)?;
            outln!("info hash v2:  {}", hex32(v2))?;
        }
        (MetaVersion::V2, Some(v2)) => {
            outln!("meta version:  2")?;
            outln!("info hash:     {} (v2, truncated)", meta.info_hash)?;
            outln!("info hash v2:  {}", hex32(v2))?;
        }
    }
    outln!(
        "piece length:  {} ({} bytes)",
        human_size(u64::from(info.piece_length)),
        info.piece_length
    )?;
    outln!("pieces:        {}", info.lengths.num_pieces())?;
    outln!("total size:    {} ({total} bytes)", human_size(total))?;
    outln!("private:       {}", if info.private { "yes" } else { "no" })?;
    if let Some(c) = &meta.comment {
        outln!("comment:       {}", printable(c))?;
    }
    if let Some(c) = &meta.created_by {
        outln!("created by:    {}", printable(c))?;
    }
    if let Some(t) = meta.creation_date {
        outln!("creation date: {} ({t})", utc_date(t))?;
    }
    let tiers = meta.tiers();
    if tiers.is_empty() {
        outln!("trackers:      none")?;
    } else {
        outln!("trackers:")?;
        for (i, tier) in tiers.iter().enumerate() {
            outln!("  tier {i}: {}", printable(&tier.join(" ")))?;
        }
    }
    for url in &meta.url_list {
        outln!("web seed:      {}", printable(url))?;
    }
    let pads = info.files.iter().filter(|f| f.pad).count() as u64;
    // A v2-only torrent lists no pad files: its files start at piece boundaries by rule, and
    // the pads we hold for that are our own bookkeeping.
    if pads > 0 && info.version.has_v1() {
        outln!(
            "files ({}, and {}):",
            info.files.len() as u64 - pads,
            count(pads, "pad file", "pad files")
        )?;
    } else if pads > 0 {
        outln!("files ({}):", info.files.len() as u64 - pads)?;
    } else {
        outln!("files ({}):", info.files.len())?;
    }
    for f in info.files.iter().filter(|f| !f.pad) {
        outln!("  {:>14}  {}", f.length, printable(&f.path.join("/")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{human_size, utc_date};

    #[test]
    fn dates_read_well() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc_date(-1), "1969-12-31 23:59:59 UTC");
        let _ = (utc_date(i64::MIN), utc_date(i64::MAX));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(1000), "1000 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(1 << 30), "1.0 GiB");
    }
}

//! `shoal create`: make a `.torrent` file from a file or a folder.

use std::io::Write;
use std::path::PathBuf;

use shoal_engine::create::{create_torrent, CreateOptions};
use shoal_engine::lengths::MAX_PIECE_LENGTH;
use shoal_engine::metainfo::{MetaVersion, Metainfo};

use crate::display::{count, printable, say};
use crate::info::human_size;
use crate::{outln, CliResult};

/// Arguments of `shoal create`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file or folder to share. Hidden names (starting with '.') are skipped unless
    /// --include-hidden; symbolic links and special files are always skipped.
    pub path: PathBuf,
    /// Where to write the .torrent file. An existing file is not overwritten without --force.
    #[arg(short, long, value_name = "OUT.torrent")]
    pub output: PathBuf,
    /// Bytes per piece: a number with an optional binary suffix (16k, 256KiB, 1MiB, 1m,
    /// 262144), at most 64 MiB; clients expect a power of two. Default: a power of two giving
    /// 1024 to 2048 pieces, 16 KiB to 16 MiB.
    #[arg(short = 'l', long, value_name = "SIZE", value_parser = parse_size)]
    pub piece_length: Option<u32>,
    /// A tracker announce URL; repeat for more, each in its own tier (BEP 12).
    #[arg(short, long = "tracker", value_name = "URL")]
    pub trackers: Vec<String>,
    /// A web seed (BEP 19): an http:// or https:// URL serving the same file (or, ending in
    /// '/', the folder holding it); repeat for more.
    #[arg(long = "web-seed", value_name = "URL")]
    pub web_seeds: Vec<String>,
    /// Mark the torrent private (BEP 27): peers only from its trackers.
    #[arg(long)]
    pub private: bool,
    /// A free-text comment.
    #[arg(short, long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// Include files and folders whose names start with '.'.
    #[arg(long)]
    pub include_hidden: bool,
    /// Hashing threads (0: every core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Overwrite OUT.torrent if it exists.
    #[arg(short, long)]
    pub force: bool,
    /// Make a BitTorrent v2 torrent only (BEP 52: SHA-256 merkle trees per file). Clients
    /// without v2 cannot use it; the piece length must be a power of two of at least 16 KiB.
    #[arg(long, conflicts_with = "hybrid")]
    pub v2: bool,
    /// Make a hybrid torrent (BEP 52): v1 and v2 at once, readable by every client, with pad
    /// files (BEP 47) aligning each file of a folder to a piece.
    #[arg(long)]
    pub hybrid: bool,
}

/// Parses a piece length such as `262144`, `16k`, `256KiB`, `1MiB` or `2m` (suffixes are binary
/// and case-insensitive: k, kb, kib = 1024; m, mb, mib = 1024²; g, gb, gib = 1024³; t, tb,
/// tib = 1024⁴), at most [`MAX_PIECE_LENGTH`].
pub fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let bad = || {
        format!(
            "bad size {s:?}: expected a number with an optional suffix such as 16k, 256KiB or 1MiB"
        )
    };
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let too_large = || {
        format!(
            "bad size {s:?}: the largest piece length is {} ({MAX_PIECE_LENGTH} bytes)",
            human_size(u64::from(MAX_PIECE_LENGTH))
        )
    };
    let bytes = n.checked_mul(unit).ok_or_else(too_large)?;
    if bytes == 0 {
        return Err(format!("bad size {s:?}: a piece holds at least one byte"));
    }
    if bytes > u64::from(MAX_PIECE_LENGTH) {
        return Err(too_large());
    }
    u32::try_from(bytes).map_err(|_| too_large())
}

/// Runs `shoal create`.
pub fn run(args: Args) -> CliResult {
    let opts = CreateOptions {
        piece_length: args.piece_length,
        trackers: args.trackers.into_iter().map(|t| vec![t]).collect(),
        private: args.private,
        comment: args.comment,
        created_by: None,
        creation_date: None,
        include_hidden: args.include_hidden,
        threads: args.threads,
        web_seeds: args.web_seeds,
        version: Some(if args.v2 {
            MetaVersion::V2
        } else if args.hybrid {
            MetaVersion::Hybrid
        } else {
            MetaVersion::V1
        }),
    };
    // Checked before hashing so a mistake costs nothing; create_new below closes the race.
    if !args.force && args.output.exists() {
        return Err(format!(
            "{} already exists (use --force to overwrite it)",
            args.output.display()
        )
        .into());
    }
    if let Some(pl) = opts.piece_length.filter(|pl| !pl.is_power_of_two()) {
        say(&format!(
            "shoal: warning: a piece length of {pl} bytes is not a power of two; most clients \
             expect one (such as {} or {})",
            human_size(u64::from(pl.next_power_of_two() / 2).max(1)),
            human_size(u64::from(pl.next_power_of_two()))
        ));
    }
    for tier in &opts.trackers {
        for url in tier.iter().filter(|u| !looks_like_tracker_url(u)) {
            say(&format!(
                "shoal: warning: tracker {:?} is not a tracker URL (http://, https:// or \
                 udp://, with a host); clients will not reach it",
                printable(url)
            ));
        }
    }
    for url in opts
        .web_seeds
        .iter()
        .filter(|u| !looks_like_web_seed_url(u))
    {
        say(&format!(
            "shoal: warning: web seed {:?} is not an http:// or https:// URL with a host; \
             clients will not use it",
            printable(url)
        ));
    }
    let bytes = create_torrent(&args.path, &opts).map_err(|e| e.to_string())?;
    let meta = Metainfo::from_bytes(&bytes)
        .map_err(|e| format!("internal error: the torrent made does not read back: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .create_new(!args.force)
        .open(&args.output)
        .map_err(|e| format!("{}: {e}", args.output.display()))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", args.output.display()))?;
    let info = &meta.info;
    if info.version.has_v1() {
        outln!("info hash: {}", meta.info_hash)?;
    }
    if let Some(v2) = &meta.info_hash_v2 {
        let hex: String = v2.iter().map(|b| format!("{b:02x}")).collect();
        outln!("info hash v2: {hex}")?;
    }
    let files = info.files.iter().filter(|f| !f.pad).count();
    outln!(
        "wrote {}: \"{}\", {}, {} in {} of {}",
        args.output.display(),
        printable(&info.name),
        count(files as u64, "file", "files"),
        human_size(meta.total_length()),
        count(u64::from(info.lengths.num_pieces()), "piece", "pieces"),
        human_size(u64::from(info.piece_length)),
    )?;
    Ok(())
}

/// Whether `url` could be a web seed's: `http://` or `https://` and a host.
fn looks_like_web_seed_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    ["http://", "https://"].iter().any(|s| {
        lower
            .strip_prefix(s)
            .is_some_and(|rest| !rest.starts_with('/') && !rest.is_empty())
    })
}

/// Whether `url` could be a tracker's: `http://`, `https://` or `udp://` and a host.
fn looks_like_tracker_url(url: &str) -> bool {
    let rest = ["http://", "https://", "udp://"].iter().find_map(|scheme| {
        url.get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .map(|_| &url[scheme.len()..])
    });
    rest.is_some_and(|r| {
        let host = r.split(['/', '?']).next().unwrap_or("");
        !host.is_empty() && !r.contains(char::is_whitespace)
    })
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("262144"), Ok(262_144));
        assert_eq!(parse_size("16k"), Ok(16_384));
        assert_eq!(parse_size("256KiB"), Ok(262_144));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2 m"), Ok(2 << 20));
        assert_eq!(parse_size("20000"), Ok(20_000));
        for bad in [
            "",
            "k",
            "1x",
            "-5",
            "1.5m",
            "0",
            "8g",
            "1GiB",
            "1TiB",
            "99999999999999999999k",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("1TiB").unwrap_err().contains("largest"));
        assert!(parse_size("65m").unwrap_err().contains("largest"));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert!(super::looks_like_tracker_url("udp://t.example:80"));
        assert!(super::looks_like_tracker_url("HTTP://t/announce"));
        assert!(!super::looks_like_tracker_url("not a url"));
        assert!(!super::looks_like_tracker_url("http:///announce"));
    }
}

//! What the user sees: the `shoal:` lines on standard error, the one progress bar they must not
//! collide with, the library's warnings routed through the same path, standard output that may
//! be a closed pipe, and how the process ends (its exit code).

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

/// How a command ends other than successfully.
#[derive(Debug)]
pub enum Failure {
    /// An error for the user: one line on standard error, exit code 1.
    Error(String),
    /// Stopped unfinished by a signal: exit code 128 + the signal's number, as shells report
    /// it (130 for SIGINT, 143 for SIGTERM). What is kept has been said already.
    Signal(i32),
    /// Standard output was closed by its reader (`shoal info x | head`): a normal end for a
    /// command-line tool, so quiet, exit code 0.
    ClosedPipe,
}

impl From<String> for Failure {
    fn from(msg: String) -> Self {
        Failure::Error(msg)
    }
}

impl From<shoal_actors::error::Error> for Failure {
    fn from(e: shoal_actors::error::Error) -> Self {
        Failure::Error(e.to_string())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error(msg) => f.write_str(msg),
            Failure::Signal(n) => write!(f, "stopped by signal {n}"),
            Failure::ClosedPipe => f.write_str("standard output was closed"),
        }
    }
}

/// The progress bar being drawn, if any: lines are printed above it, never through it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Makes `bar` the bar that [`say`] prints around (`None`: no bar).
pub fn set_bar(bar: Option<ProgressBar>) {
    *BAR.lock().unwrap_or_else(|e| e.into_inner()) = bar;
}

/// Prints one line on standard error, above the progress bar if one is drawn. A closed
/// standard error is ignored: the work goes on without its commentary.
pub fn say(line: &str) {
    let bar = BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let print = || {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    };
    match bar {
        Some(bar) if !bar.is_finished() => bar.suspend(print),
        _ => print(),
    }
}

/// `println!` that reports a closed pipe instead of panicking: `outln!(...)?`.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::display::out(format_args!($($arg)*))
    };
}

/// Writes one line on standard output; see [`outln!`].
pub fn out(args: fmt::Arguments<'_>) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                Failure::ClosedPipe
            } else {
                Failure::Error(format!("cannot write to standard output: {e}"))
            }
        })
}

/// `1 piece`, `2 pieces`: `n` and the word, plural unless `n` is one.
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A name for the terminal: control characters (escape sequences, bells, line breaks) and
/// the invisible marks that reorder text shown as `\u{..}` escapes instead of acted upon.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// How long the same library warning stays quiet after it was printed.
const REPEAT_QUIET: Duration = Duration::from_secs(60);

/// The most distinct warnings remembered for [`REPEAT_QUIET`]; older ones are forgotten (and
/// may be printed again), so a flood of distinct messages cannot grow the table.
const REMEMBERED_WARNINGS: usize = 64;

/// The library's warnings and errors as `shoal:` lines through [`say`], each repeated at most
/// once a minute. Developers who set `RUST_LOG` get `env_logger` instead, unchanged.
struct Logger {
    /// When each recent message was printed.
    recent: Mutex<HashMap<String, Instant>>,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        {
            let now = Instant::now();
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent
                .get(&msg)
                .is_some_and(|t| now.duration_since(*t) < REPEAT_QUIET)
            {
                return;
            }
            if recent.len() >= REMEMBERED_WARNINGS {
                recent.retain(|_, t| now.duration_since(*t) < REPEAT_QUIET);
                if recent.len() >= REMEMBERED_WARNINGS {
                    recent.clear();
                }
            }
            recent.insert(msg.clone(), now);
        }
        say(&match record.level() {
            log::Level::Error => format!("shoal: {msg}"),
            _ => format!("shoal: warning: {msg}"),
        });
    }

    fn flush(&self) {}
}

/// Sets up logging: `env_logger` when `RUST_LOG` is set, else the tidy [`Logger`].
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        env_logger::Builder::from_env(env_logger::Env::default())
            .format_timestamp_millis()
            .init();
        return;
    }
    let logger = Logger {
        recent: Mutex::new(HashMap::new()),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// The terminal's width in columns, if standard error is a terminal that says.
pub fn terminal_width() -> Option<usize> {
    let size = rustix::termios::tcgetwinsize(std::io::stderr()).ok()?;
    (size.ws_col > 0).then_some(usize::from(size.ws_col))
}

#[cfg(test)]
mod tests {
    use super::{count, printable};

    #[test]
    fn counts_and_names_read_well() {
        assert_eq!(count(1u32, "piece", "pieces"), "1 piece");
        assert_eq!(count(0u32, "piece", "pieces"), "0 pieces");
        assert_eq!(printable("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\u{a}");
        assert_eq!(printable("caf\u{e9} \u{202e}x"), "caf\u{e9} \\u{202e}x");
    }
}

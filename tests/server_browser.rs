//! `shoal server`'s web page in a real browser: Debian's `chromium`, headless, driven by
//! Playwright (`tests/browser/page.js`). scripts/test installs both.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::server::{make_torrent, start_seeder, ServerProc};
use serde_json::json;

#[test]
fn the_page_adds_a_torrent_sees_it_complete_and_pauses_it() {
    common::require_program("chromium");
    common::require_program("node");
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run scripts/test (npm install in tests/browser)"
    );
    let tmp = common::tempdir();
    let torrent = make_torrent(tmp.path(), "holiday-photos.bin", 3_000_000, 42, 32);
    let (_seeder, peer) = start_seeder(&torrent, &tmp.path().join("holiday-photos.bin"), &[]);
    let server = ServerProc::start(
        &tmp.path().join("dl"),
        &tmp.path().join("state"),
        &["--peer", &peer],
    );
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("server-page.png");
    let _ = std::fs::remove_file(&shot);
    let magnet = common::shoal(&["magnet", torrent.to_str().unwrap()]);
    assert!(magnet.status.success(), "shoal magnet");
    let magnet = String::from_utf8(magnet.stdout).unwrap().trim().to_string();
    let mut cmd = Command::new("node");
    cmd.arg(browser_dir.join("page.js"))
        .arg(format!("http://{}/", server.http))
        .arg(&magnet)
        .arg(&shot);
    let out = common::run_bounded(cmd, Duration::from_secs(240));
    assert!(
        out.status.success(),
        "the browser script failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("the screenshot was kept");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    eprintln!("screenshot: {}", shot.display());

    // What the page did, as the API sees it.
    let list = server.get_json("/api/v1/torrents");
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "one torrent, added by its magnet: {list}"
    );
    assert_eq!(list[0]["name"], "holiday-photos.bin");
    assert_eq!(list[0]["progress"], json!(1.0));
    assert_eq!(list[0]["state"], "paused");
    assert!(server.terminate().success());
}

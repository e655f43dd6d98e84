//! Local service discovery (BEP 14) between two network namespaces joined by a veth pair,
//! which the test creates with `ip netns` and `ip link` (it needs root). A `shoal seed` in one
//! and a `shoal download` in the other, of a trackerless torrent, with no `--peer` and no DHT:
//! only LSD's multicast can bring them together.
//!
//! When the namespaces cannot be made (not root, no `ip`), the test says why on stderr and
//! passes without running: it never skips silently.
//!
//! Run with `cargo test --release --test lsd -- --nocapture`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::clients::*;
use common::*;

/// Two namespaces and the veth pair between them; deleted on drop.
struct Netns {
    names: [String; 2],
}

impl Netns {
    /// `shoal-lsd-a-PID` (10.231.0.1/24) and `shoal-lsd-b-PID` (10.231.0.2/24), or why not.
    fn create() -> Result<Self, String> {
        let pid = std::process::id();
        let names = [format!("shoal-lsd-a-{pid}"), format!("shoal-lsd-b-{pid}")];
        let ns = Netns { names };
        let [a, b] = &ns.names;
        let veth_a = format!("vla{}", pid % 100_000);
        let veth_b = format!("vlb{}", pid % 100_000);
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec![
                "link", "add", &veth_a, "netns", a, "type", "veth", "peer", "name", &veth_b,
                "netns", b,
            ],
            vec!["-n", a, "addr", "add", "10.231.0.1/24", "dev", &veth_a],
            vec!["-n", b, "addr", "add", "10.231.0.2/24", "dev", &veth_b],
            vec!["-n", a, "link", "set", &veth_a, "up"],
            vec!["-n", b, "link", "set", &veth_b, "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new("ip")
                .args(&step)
                .output()
                .map_err(|e| format!("cannot run `ip`: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`ip {}` failed: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(ns)
    }

    /// `ip netns exec NS shoal ARGS`, logging to `log`.
    fn shoal(&self, i: usize, args: &[&str], log: &std::path::Path) -> ChildGuard {
        let file = std::fs::File::create(log).unwrap();
        let err = file.try_clone().unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names[i]])
            .arg(shoal_bin())
            .args(args)
            .env("RUST_LOG", "shoal_actors=debug,shoal=info")
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(err);
        ChildGuard::spawn(cmd)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and so the pair.
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

#[test]
fn lsd_finds_a_seeder_in_another_network_namespace() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!(
                "SKIPPED lsd_finds_a_seeder_in_another_network_namespace: cannot create the \
                 network namespaces it needs (it must run as root with iproute2): {why}"
            );
            return;
        }
    };
    let dir = tempdir();
    let d = dir.path();
    let content = make_content(d, "lsd", Shape::Multi, 1_500_000, 3);
    let torrent = d.join("lsd.torrent");
    create_torrent(&content, &torrent, "32768", None);
    let seed_log = d.join("seed.log");
    let _seeder = ns.shoal(
        0,
        &[
            "seed",
            torrent.to_str().unwrap(),
            content.to_str().unwrap(),
            "--listen",
            "10.231.0.1:6881",
            "--no-dht",
        ],
        &seed_log,
    );
    // The downloader starts once the seeder listens, so the announce each makes at start is
    // heard by the other (the seeder dials the downloader it hears of, or the other way).
    wait_until(
        Duration::from_secs(20),
        "seeder started",
        &[&seed_log],
        || std::fs::read_to_string(&seed_log).is_ok_and(|t| t.contains("seeding")),
    );
    let out = d.join("out");
    let down_log = d.join("download.log");
    let mut downloader = ns.shoal(
        1,
        &[
            "download",
            torrent.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--listen",
            "10.231.0.2:6881",
            "--no-dht",
        ],
        &down_log,
    );
    wait_success(
        &mut downloader,
        Duration::from_secs(60),
        "shoal download through lsd",
        &[&down_log, &seed_log],
    );
    assert_same_content(&content, &out.join("lsd"));
    let logs =
        std::fs::read_to_string(&down_log).unwrap() + &std::fs::read_to_string(&seed_log).unwrap();
    assert!(
        logs.contains("lsd: 10.231.0."),
        "no lsd announce heard:\n{logs}"
    );
}

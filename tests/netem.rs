//! uTP and TCP over an impaired link: two network namespaces joined by a veth pair, with
//! `tc qdisc ... netem delay 50ms loss 1%` on both ends. A `shoal seed` in one namespace and a
//! `shoal download` in the other, 64 MiB over uTP only, then over TCP only, byte-exact, and the
//! two rates printed side by side; then both at once on the same link, where uTP's LEDBAT
//! should yield to TCP (the rates are printed, not asserted: only completion within a bound
//! and byte-exactness are).
//!
//! The transports are forced with nftables rules inside the namespaces (no CLI option is
//! needed): the uTP pair uses ports 6882 (seeder) and 6892 (downloader), and TCP to or from
//! them is dropped; the TCP pair uses 6881 and 6891, and UDP to or from them is dropped. A
//! dial tries both transports at once, so each pair connects over the one that gets through.
//!
//! When the kernel has no netem (`CONFIG_NET_SCH_NETEM`), the link is impaired as closely as
//! the kernel allows instead, and the test says so: 1% random loss each way by an nftables
//! `numgen random` rule, and a `tbf` bottleneck of 100 Mbit/s with a 100 ms queue on both
//! ends (no fixed delay; the queue is what LEDBAT measures when both transfers share it).
//!
//! When the namespaces or rules cannot be made (not root, no `ip`, `tc` or `nft`), the test
//! says why on stderr (`SKIPPED ...: why`) and passes without running: it never skips
//! silently. `SHOAL_NETEM_MIB` sets the size of each transfer (default 64).
//!
//! Run with `cargo test --release --test netem -- --nocapture`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::clients::*;
use common::*;

/// The seeder's address (namespace a).
const SEEDER_IP: &str = "10.233.0.1";
/// The downloader's address (namespace b).
const DOWNLOADER_IP: &str = "10.233.0.2";
/// Ports of the pair that may speak TCP only (seeder, downloader).
const TCP_PORTS: (u16, u16) = (6881, 6891);
/// Ports of the pair that may speak uTP only (seeder, downloader).
const UTP_PORTS: (u16, u16) = (6882, 6892);
/// The longest any one transfer (or the two together) may take: 64 MiB at 150 KB/s, a rate
/// far under what either transport reaches on this link, so only a stall fails it.
const TRANSFER_LIMIT: Duration = Duration::from_secs(450);

/// Two namespaces, the veth pair between them, their impairment and their transport rules;
/// all deleted on drop (deleting a namespace deletes its end of the pair, its qdiscs and its
/// nftables tables), so a failed assertion leaves nothing behind.
struct Link {
    names: [String; 2],
    /// How the link is impaired, for the report.
    impairment: String,
}

/// Runs `ip ARGS`, or says why it failed.
fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

/// Runs `PROGRAM ARGS` to completion (bounded), or says why it failed.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let exists = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !exists {
        return Err(format!("`{program}` is not installed"));
    }
    let out = run_bounded(cmd, Duration::from_secs(20));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `nft -f -` in namespace `ns` with `rules` on its standard input (bounded).
fn nft(ns: &str, rules: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `ip netns exec {ns} nft`: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(rules.as_bytes())
        .map_err(|e| format!("cannot write the nftables rules: {e}"))?;
    let mut guard = ChildGuard::new(child, "nft");
    match guard.wait_timeout(Duration::from_secs(20)) {
        Some(s) if s.success() => Ok(()),
        Some(s) => {
            let mut err = String::new();
            if let Some(mut e) = guard.child().stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            Err(format!("`nft -f -` in {ns} failed ({s}): {}", err.trim()))
        }
        None => Err("`nft -f -` did not finish within 20 s".into()),
    }
}

impl Link {
    /// `shoal-netem-a-PID` (10.233.0.1/24) and `shoal-netem-b-PID` (10.233.0.2/24), impaired
    /// and with the transport rules in place, or why not.
    fn create() -> Result<Self, String> {
        let pid = std::process::id();
        let names = [
            format!("shoal-netem-a-{pid}"),
            format!("shoal-netem-b-{pid}"),
        ];
        let mut link = Link {
            names,
            impairment: String::new(),
        };
        let [a, b] = link.names.clone();
        let veth = [
            format!("vna{}", pid % 100_000),
            format!("vnb{}", pid % 100_000),
        ];
        ip(&["netns", "add", &a])?;
        ip(&["netns", "add", &b])?;
        ip(&[
            "link", "add", &veth[0], "netns", &a, "type", "veth", "peer", "name", &veth[1],
            "netns", &b,
        ])?;
        ip(&[
            "-n",
            &a,
            "addr",
            "add",
            &format!("{SEEDER_IP}/24"),
            "dev",
            &veth[0],
        ])?;
        ip(&[
            "-n",
            &b,
            "addr",
            "add",
            &format!("{DOWNLOADER_IP}/24"),
            "dev",
            &veth[1],
        ])?;
        for (ns, dev) in [(&a, &veth[0]), (&b, &veth[1])] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // netem on both ends when the kernel has it; otherwise loss by nftables and a tbf
        // bottleneck, said so in the report.
        let netem = |ns: &str, dev: &str| {
            run(
                "ip",
                &[
                    "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem",
                    "delay", "50ms", "loss", "1%",
                ],
            )
        };
        let loss_rule;
        match netem(&a, &veth[0]).and_then(|()| netem(&b, &veth[1])) {
            Ok(()) => {
                link.impairment = "netem delay 50ms loss 1% on both ends".into();
                loss_rule = "";
            }
            Err(why) => {
                for (ns, dev) in [(&a, &veth[0]), (&b, &veth[1])] {
                    let _ = run(
                        "ip",
                        &[
                            "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root",
                        ],
                    );
                    run(
                        "ip",
                        &[
                            "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                            "rate", "100mbit", "burst", "64kb", "latency", "100ms",
                        ],
                    )?;
                }
                link.impairment = format!(
                    "NO NETEM ({why}); instead 1% random loss each way (nftables) and a tbf \
                     bottleneck of 100 Mbit/s with a 100 ms queue on both ends, no fixed delay"
                );
                loss_rule = "meta l4proto { tcp, udp } numgen random mod 100 < 1 drop";
            }
        }
        let rules = format!(
            "table inet shoalnetem {{\n\
             \x20 chain input {{\n\
             \x20   type filter hook input priority 0; policy accept;\n\
             \x20   tcp sport {{ {us}, {ud} }} drop\n\
             \x20   tcp dport {{ {us}, {ud} }} drop\n\
             \x20   udp sport {{ {ts}, {td} }} drop\n\
             \x20   udp dport {{ {ts}, {td} }} drop\n\
             \x20   {loss_rule}\n\
             \x20 }}\n\
             }}\n",
            us = UTP_PORTS.0,
            ud = UTP_PORTS.1,
            ts = TCP_PORTS.0,
            td = TCP_PORTS.1,
        );
        nft(&a, &rules)?;
        nft(&b, &rules)?;
        Ok(link)
    }

    /// `ip netns exec NS shoal ARGS`, logging to `log`.
    fn shoal(&self, i: usize, args: &[&str], log: &Path) -> ChildGuard {
        let file = std::fs::File::create(log).unwrap();
        let err = file.try_clone().unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names[i]])
            .arg(shoal_bin())
            .args(args)
            .env("RUST_LOG", "shoal_actors=info,shoal=info")
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(err);
        ChildGuard::spawn(cmd)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Flags that keep a shoal to the one peer it is given (no discovery that could bring a
/// connection over the other transport).
const ALONE: [&str; 4] = ["--no-dht", "--no-lsd", "--no-pex", "--no-trackers"];

/// One transfer: its content, torrent and ports.
struct Transfer<'a> {
    name: &'a str,
    content: &'a Path,
    torrent: &'a Path,
    ports: (u16, u16),
}

impl Transfer<'_> {
    /// Starts the downloader into `out`.
    fn start(&self, link: &Link, out: &Path, log: &Path) -> ChildGuard {
        let listen = format!("{DOWNLOADER_IP}:{}", self.ports.1);
        let peer = format!("{SEEDER_IP}:{}", self.ports.0);
        let mut args = vec![
            "download",
            self.torrent.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--listen",
            &listen,
            "--peer",
            &peer,
        ];
        args.extend(ALONE);
        link.shoal(1, &args, log)
    }

    /// Checks the download in `out` byte for byte.
    fn check(&self, out: &Path) {
        assert_same_content(self.content, &out.join(self.name));
    }
}

/// Bytes written under `root` so far: the allocated blocks of its files, which the
/// downloader creates sparse.
fn written(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if p.file_name().is_some_and(|n| n == ".shoal") {
                continue;
            }
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        } else {
            total += meta.blocks() * 512;
        }
    }
    total
}

/// MB/s (10^6 bytes per second).
fn rate(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64() / 1e6
}

#[test]
fn utp_and_tcp_over_an_impaired_link() {
    let link = match Link::create() {
        Ok(link) => link,
        Err(why) => {
            eprintln!(
                "SKIPPED utp_and_tcp_over_an_impaired_link: cannot create the impaired network \
                 namespaces it needs (it must run as root with iproute2 and nftables): {why}"
            );
            return;
        }
    };
    eprintln!("netem: link impairment: {}", link.impairment);
    let mib: u64 = std::env::var("SHOAL_NETEM_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let size = mib << 20;
    let dir = tempdir();
    let d = dir.path();
    let content_u = make_content(d, "over-utp", Shape::Single, size, 1);
    let content_t = make_content(d, "over-tcp", Shape::Single, size, 2);
    let torrent_u = d.join("over-utp.torrent");
    let torrent_t = d.join("over-tcp.torrent");
    create_torrent(&content_u, &torrent_u, "262144", None);
    create_torrent(&content_t, &torrent_t, "262144", None);
    let utp = Transfer {
        name: "over-utp",
        content: &content_u,
        torrent: &torrent_u,
        ports: UTP_PORTS,
    };
    let tcp = Transfer {
        name: "over-tcp",
        content: &content_t,
        torrent: &torrent_t,
        ports: TCP_PORTS,
    };

    // One seeder per transport, both in namespace a, for the whole test.
    let mut seeders = Vec::new();
    let mut seed_logs = Vec::new();
    for t in [&utp, &tcp] {
        let log = d.join(format!("seed-{}.log", t.name));
        let listen = format!("{SEEDER_IP}:{}", t.ports.0);
        let mut args = vec![
            "seed",
            t.torrent.to_str().unwrap(),
            t.content.to_str().unwrap(),
            "--listen",
            &listen,
        ];
        args.extend(ALONE);
        seeders.push(link.shoal(0, &args, &log));
        seed_logs.push(log);
    }
    for log in &seed_logs {
        wait_until(Duration::from_secs(60), "seeder started", &[log], || {
            std::fs::read_to_string(log).is_ok_and(|t| t.contains("seeding"))
        });
    }

    // Each transport alone.
    let mut alone = Vec::new();
    for t in [&utp, &tcp] {
        let out = d.join(format!("alone-{}", t.name));
        let log = d.join(format!("alone-{}.log", t.name));
        let started = Instant::now();
        let mut child = t.start(&link, &out, &log);
        let logs = [
            log.as_path(),
            seed_logs[0].as_path(),
            seed_logs[1].as_path(),
        ];
        wait_success(
            &mut child,
            TRANSFER_LIMIT,
            &format!("{} download alone", t.name),
            &logs,
        );
        let took = started.elapsed();
        t.check(&out);
        alone.push(took);
    }

    // Both at once on the same link: TCP first, uTP a second later, so uTP meets a queue.
    let out_t = d.join("shared-over-tcp");
    let out_u = d.join("shared-over-utp");
    let log_t = d.join("shared-over-tcp.log");
    let log_u = d.join("shared-over-utp.log");
    let start_t = Instant::now();
    let mut child_t = tcp.start(&link, &out_t, &log_t);
    std::thread::sleep(Duration::from_secs(1));
    let start_u = Instant::now();
    let mut child_u = utp.start(&link, &out_u, &log_u);
    let (mut took_t, mut took_u) = (None, None);
    // What uTP had on disk when TCP finished (the files are sparse until written), for its
    // rate while the two shared the link.
    let mut utp_during_tcp = None;
    let logs = [
        log_t.as_path(),
        log_u.as_path(),
        seed_logs[0].as_path(),
        seed_logs[1].as_path(),
    ];
    while took_t.is_none() || took_u.is_none() {
        for (child, took, start, what) in [
            (&mut child_t, &mut took_t, start_t, "tcp"),
            (&mut child_u, &mut took_u, start_u, "utp"),
        ] {
            if took.is_none() {
                if let Some(status) = child.child().try_wait().expect("try_wait") {
                    assert!(
                        status.success(),
                        "shared {what} download failed ({status})\n{}",
                        tails(&logs)
                    );
                    *took = Some(start.elapsed());
                }
            }
        }
        if took_t.is_some() && utp_during_tcp.is_none() {
            utp_during_tcp = Some((written(&out_u), start_u.elapsed()));
        }
        assert!(
            start_t.elapsed() < TRANSFER_LIMIT * 2,
            "the shared downloads did not finish within {:?}\n{}",
            TRANSFER_LIMIT * 2,
            tails(&logs)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    tcp.check(&out_t);
    utp.check(&out_u);
    let (took_t, took_u) = (took_t.unwrap(), took_u.unwrap());

    eprintln!("netem: {mib} MiB each; {}", link.impairment);
    eprintln!("netem:                 uTP                    TCP");
    eprintln!(
        "netem: alone   {:>9.2} MB/s ({:>5.1} s)  {:>9.2} MB/s ({:>5.1} s)",
        rate(size, alone[0]),
        alone[0].as_secs_f64(),
        rate(size, alone[1]),
        alone[1].as_secs_f64()
    );
    eprintln!(
        "netem: shared (whole transfer)  {:>9.2} MB/s ({:>5.1} s)  {:>9.2} MB/s ({:>5.1} s)",
        rate(size, took_u),
        took_u.as_secs_f64(),
        rate(size, took_t),
        took_t.as_secs_f64()
    );
    let (overlap_bytes, overlap) = utp_during_tcp.unwrap();
    eprintln!(
        "netem: while both ran ({:.1} s), uTP got {:.2} MB/s ({} of its {} MiB)",
        overlap.as_secs_f64(),
        rate(overlap_bytes, overlap),
        if overlap_bytes >= size {
            "all".to_string()
        } else {
            format!("{:.1} MiB", overlap_bytes as f64 / 1048576.0)
        },
        mib
    );
    for mut s in seeders {
        terminate(&mut s, Duration::from_secs(10));
    }
}

#!/usr/bin/python3
"""libtorrent seeder and downloader for the throughput bench (run with Debian's /usr/bin/python3).

    lt_bench.py seed FILE.torrent SAVE_PATH PORT [TRACKER_URL|-] [tuned|untuned]
        checks the data in SAVE_PATH, prints "ready" once seeding on 127.0.0.1:PORT, then seeds
        until killed, printing "upload FIRST LAST BYTES" after each upload (announcing to TRACKER_URL when given and not "-", so that aria2c can find
        it). "tuned" (the default) starts from libtorrent's high_performance_seed() settings,
        what a well-run seedbox uses; "untuned" from its defaults.
    lt_bench.py download FILE.torrent SAVE_PATH PEER_HOST:PORT [TIMEOUT_SECONDS]
        downloads from that one peer, prints "complete SECONDS" (from the first connection
        attempt to the last piece) and exits; exit status 1 on timeout.

The downloader exits as soon as it has printed "complete": the bench times it to its exit.

Loopback settings from REAL-CLIENTS.md: several connections per IP allowed, DHT, LSD, UPnP,
NAT-PMP and uTP off. Nothing is rate limited (local peers are exempt by default).
"""
import sys
import time

import libtorrent as lt


def session(port, tuned=False):
    settings = lt.high_performance_seed() if tuned else {}
    settings.update({
        "listen_interfaces": f"127.0.0.1:{port}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": 0,
    })
    return lt.session(settings)


def add(ses, torrent, save_path, trackers):
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = save_path
    atp.trackers = trackers
    h = ses.add_torrent(atp)
    if not trackers:
        h.replace_trackers([])
    return h


def seed(torrent, save_path, port, tracker, tuned):
    ses = session(port, tuned)
    h = add(ses, torrent, save_path, [tracker] if tracker else [])
    while not h.status().is_seeding:
        if h.status().state == lt.torrent_status.downloading:
            print("data does not match the torrent", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.05)
    print("ready", flush=True)
    # Time each upload from its first to its last payload byte, from libtorrent's own counter
    # (updated as each send completes): "upload FIRST LAST BYTES" (seconds on the monotonic
    # clock) once nothing more went out for 300 ms. Polled every 10 ms while idle and 5 ms
    # while uploading, so the times are good to 10 ms and 5 ms; the polling costs this process
    # about 1% of a core (3% at a steady 2 ms), which counts in its CPU time.
    span = None  # (first, last, bytes at first poll before it)
    before = h.status(0).total_payload_upload
    prev_t = time.monotonic()
    next_announce = prev_t + 5
    while True:
        time.sleep(0.005 if span else 0.010)
        now = time.monotonic()
        up = h.status(0).total_payload_upload
        if up > before:
            span = (span[0] if span else prev_t, now, span[2] if span else before)
            before = up
        elif span and now - span[1] > 0.3:
            print(f"upload {span[0]:.6f} {span[1]:.6f} {up - span[2]}", flush=True)
            span = None
        prev_t = now
        # Re-announce often: the tracker forgets a peer silent for two intervals, and aria2c
        # (which has no way to be given a peer directly) must find us there on every run.
        if tracker and now >= next_announce:
            h.force_reannounce()
            next_announce = now + 5


def download(torrent, save_path, peer, timeout):
    host, port = peer.rsplit(":", 1)
    ses = session(0)
    h = add(ses, torrent, save_path, [])
    # Wait for the (empty) file check to end, then dial the seeder.
    while h.status().state in (lt.torrent_status.checking_files,
                               lt.torrent_status.checking_resume_data):
        time.sleep(0.01)
    start = time.time()
    h.connect_peer((host, int(port)))
    deadline = start + timeout
    while not h.status().is_seeding:
        if time.time() > deadline:
            print("timed out", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.01)
    print(f"complete {time.time() - start:.3f}", flush=True)


def main():
    cmd = sys.argv[1]
    if cmd == "seed":
        tracker = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "-" else None
        tuned = (sys.argv[6] if len(sys.argv) > 6 else "tuned") == "tuned"
        seed(sys.argv[2], sys.argv[3], int(sys.argv[4]), tracker, tuned)
    elif cmd == "download":
        download(sys.argv[2], sys.argv[3], sys.argv[4],
                 float(sys.argv[5]) if len(sys.argv) > 5 else 600.0)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

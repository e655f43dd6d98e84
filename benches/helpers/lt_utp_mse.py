#!/usr/bin/python3
"""libtorrent seeder and downloader for the uTP and MSE bench (run with Debian's /usr/bin/python3).

    lt_utp_mse.py seed FILE.torrent SAVE_PATH PORT [--utp-only]
                  [--encryption off|forced-rc4|enabled] [--high-performance]
        checks the data in SAVE_PATH, prints "ready" once seeding on 127.0.0.1:PORT, then seeds
        until killed.
    lt_utp_mse.py download FILE.torrent SAVE_PATH PEER_HOST:PORT [--utp-only]
                  [--encryption off|forced-rc4]
        downloads from that one peer, prints "complete SECONDS" (from the first connection
        attempt to the last piece) and exits; exit status 1 after 600 s.

Loopback settings as in lt_bench.py (DHT, LSD, UPnP, NAT-PMP off, several connections per IP).
--utp-only: uTP in and out, TCP off (as tests/helpers/lt_peer.py --utp-only); otherwise TCP
only. --encryption forced-rc4: in and out policies forced, RC4 only; off (the default): no MSE;
enabled (for a seeder serving both kinds in one run): in and out policies enabled, RC4 only,
so a peer that opens plaintext gets plaintext and one that opens MSE gets RC4.
--high-performance: libtorrent's own high_performance_seed() settings underneath.
"""
import argparse
import sys
import time

import libtorrent as lt


def session(port, utp_only, encryption, high_performance):
    settings = lt.high_performance_seed() if high_performance else {}
    settings.update({
        "listen_interfaces": f"127.0.0.1:{port}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": utp_only,
        "enable_incoming_utp": utp_only,
        "enable_outgoing_tcp": not utp_only,
        "enable_incoming_tcp": not utp_only,
        "allow_multiple_connections_per_ip": True,
        "out_enc_policy": int(lt.enc_policy.disabled),
        "in_enc_policy": int(lt.enc_policy.disabled),
        "alert_mask": 0,
    })
    if encryption == "forced-rc4":
        settings["out_enc_policy"] = int(lt.enc_policy.forced)
        settings["in_enc_policy"] = int(lt.enc_policy.forced)
        settings["allowed_enc_level"] = int(lt.enc_level.rc4)
    elif encryption == "enabled":
        settings["out_enc_policy"] = int(lt.enc_policy.enabled)
        settings["in_enc_policy"] = int(lt.enc_policy.enabled)
        settings["allowed_enc_level"] = int(lt.enc_level.rc4)
    return lt.session(settings)


def add(ses, torrent, save_path):
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = save_path
    h = ses.add_torrent(atp)
    h.replace_trackers([])
    return h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["seed", "download"])
    ap.add_argument("torrent")
    ap.add_argument("save_path")
    ap.add_argument("where", help="seed: PORT; download: PEER_HOST:PORT")
    ap.add_argument("--utp-only", action="store_true")
    ap.add_argument("--encryption", choices=["off", "forced-rc4", "enabled"], default="off")
    ap.add_argument("--high-performance", action="store_true")
    args = ap.parse_args()
    if args.cmd == "seed":
        ses = session(int(args.where), args.utp_only, args.encryption, args.high_performance)
        h = add(ses, args.torrent, args.save_path)
        while not h.status().is_seeding:
            if h.status().state == lt.torrent_status.downloading:
                print("data does not match the torrent", file=sys.stderr)
                sys.exit(1)
            time.sleep(0.05)
        print("ready", flush=True)
        while True:
            time.sleep(5)
    host, port = args.where.rsplit(":", 1)
    ses = session(0, args.utp_only, args.encryption, args.high_performance)
    h = add(ses, args.torrent, args.save_path)
    while h.status().state in (lt.torrent_status.checking_files,
                               lt.torrent_status.checking_resume_data):
        time.sleep(0.01)
    start = time.time()
    h.connect_peer((host, int(port)))
    deadline = start + 600
    while not h.status().is_seeding:
        if time.time() > deadline:
            print("timed out", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.01)
    print(f"complete {time.time() - start:.3f}", flush=True)


if __name__ == "__main__":
    main()

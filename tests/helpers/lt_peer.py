#!/usr/bin/python3
"""A libtorrent peer for the interop tests (run with Debian's /usr/bin/python3).

    lt_peer.py TORRENT|MAGNET SAVE_PATH --port PORT [--peer HOST:PORT]... [--seed] [--upload-mode]
               [--no-trackers] [--timeout SECONDS] [--upload-limit BYTES_PER_SECOND]
               [--encryption off|forced-rc4|forced-plaintext|enabled] [--utp-only]

Adds TORRENT (a .torrent file, or a magnet link whose metadata it fetches from peers first)
with its data in SAVE_PATH (SAVE_PATH/<name>), listening on 127.0.0.1:PORT only,
with DHT, local discovery, UPnP, NAT-PMP, uTP and encryption off, so that it speaks plain
BitTorrent over TCP on loopback (--utp-only: over uTP only, TCP off). --encryption turns message stream encryption on: forced-rc4
(in and out policies forced, RC4 only), forced-plaintext (forced, the obfuscated handshake
then plaintext), or enabled (both ways allowed, both levels). Every peer given with --peer is dialled (and dialled again
while no peer is connected, in case it was not listening yet). The torrent's trackers are used
unless --no-trackers.

Prints one JSON object a line on stdout, flushed:
    {"event": "status", "state", "progress", "pieces", "num_pieces", "peers", "down", "up",
     "clients": names of the connected peers' clients,
     "rc4": how many connected peers use RC4, "rc4_seen": the most at once so far,
     "obfuscated_seen": the most peers at once whose MSE handshake chose plaintext}
      every half second;
    (status also has "pex_peers": connected peers libtorrent learned through peer exchange,
     "pex_seen": the most at once so far, and "metadata": whether the metadata is here);
    {"event": "metadata", "seconds"} once a magnet's metadata arrived (seconds since start);
    {"event": "finished", "clients_seen", ...status fields} once the download completes
      (clients_seen: every peer client name seen so far) (then exits 0,
      unless --seed, which keeps the torrent seeding until killed or the timeout);
    {"event": "error", "message"} on a torrent error (then exits 1);
    {"event": "peer_gone", "message"} when a peer disconnects (with --encryption only).
Exits 3 when the timeout passes first.
"""
import argparse
import json
import sys
import time

import libtorrent as lt


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def status_fields(st, h):
    ti = h.torrent_file()
    return {
        "state": str(st.state),
        "progress": st.progress,
        "pieces": st.num_pieces,
        "num_pieces": ti.num_pieces() if ti is not None else 0,
        "metadata": st.has_metadata,
        "peers": st.num_peers,
        "down": st.total_payload_download,
        "up": st.total_payload_upload,
    }


def peer_clients(h):
    """The client names of connected peers (from their extended handshake's `v`)."""
    out = []
    for p in h.get_peer_info():
        c = p.client
        out.append(c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c))
    return out


def rc4_peers(h):
    """How many connected peers libtorrent reports as RC4-encrypted."""
    return sum(1 for p in h.get_peer_info() if p.flags & lt.peer_info.rc4_encrypted)


def obfuscated_peers(h):
    """How many connected peers libtorrent reports as MSE-handshaken, then plaintext."""
    return sum(1 for p in h.get_peer_info() if p.flags & lt.peer_info.plaintext_encrypted)


def utp_peers(h):
    """How many connected peers run over uTP (peer_info.utp_socket)."""
    return sum(1 for p in h.get_peer_info() if p.flags & (1 << 17))


def pex_peers(h):
    """How many connected peers libtorrent learned through peer exchange (source pex = 4)."""
    return sum(1 for p in h.get_peer_info() if p.source & 4)


def parse_peer(s):
    host, _, port = s.rpartition(":")
    return (host, int(port))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("torrent")
    ap.add_argument("save_path")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--seed", action="store_true")
    ap.add_argument("--no-trackers", action="store_true")
    # Download nothing, stay connected (BEP 11 tests: a peer that has nothing but knows others).
    ap.add_argument("--upload-mode", action="store_true")
    ap.add_argument("--download-limit", type=int, default=0, help="bytes per second, 0: none")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--upload-limit", type=int, default=0, help="bytes per second, 0: none")
    ap.add_argument(
        "--encryption",
        choices=["off", "forced-rc4", "forced-plaintext", "enabled"],
        default="off",
    )
    ap.add_argument(
        "--utp-only",
        action="store_true",
        help="speak uTP only (TCP off both ways), instead of TCP only",
    )
    args = ap.parse_args()

    settings = {
        "listen_interfaces": f"127.0.0.1:{args.port}",
        "outgoing_interfaces": "127.0.0.1",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        # Every peer is 127.0.0.1: tell them apart by port.
        "allow_multiple_connections_per_ip": True,
        # Plain BitTorrent: no MSE handshake attempts first.
        "out_enc_policy": int(lt.enc_policy.disabled),
        "in_enc_policy": int(lt.enc_policy.disabled),
        # Announce to loopback trackers and accept loopback peers from them.
        "announce_to_all_tiers": True,
        "announce_to_all_trackers": True,
        "alert_mask": int(lt.alert.category_t.error_notification),
    }
    if args.upload_limit > 0:
        settings["upload_rate_limit"] = args.upload_limit
    if args.utp_only:
        settings["enable_outgoing_utp"] = True
        settings["enable_incoming_utp"] = True
        settings["enable_outgoing_tcp"] = False
        settings["enable_incoming_tcp"] = False
    if args.download_limit > 0:
        settings["download_rate_limit"] = args.download_limit
    if args.encryption != "off":
        policy = lt.enc_policy.enabled if args.encryption == "enabled" else lt.enc_policy.forced
        level = {
            "forced-rc4": lt.enc_level.rc4,
            "forced-plaintext": lt.enc_level.plaintext,
            "enabled": lt.enc_level.both,
        }[args.encryption]
        settings["out_enc_policy"] = int(policy)
        settings["in_enc_policy"] = int(policy)
        settings["allowed_enc_level"] = int(level)
        # Why peers leave, for the encryption tests' failure messages.
        settings["alert_mask"] = int(
            lt.alert.category_t.error_notification
            | lt.alert.category_t.connect_notification
            | lt.alert.category_t.peer_notification
        )
    ses = lt.session(settings)
    if args.upload_limit > 0 or args.download_limit > 0:
        # Local peers are exempt from rate limits unless put in the global peer class.
        f = lt.ip_filter()
        f.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
        ses.set_peer_class_filter(f)
    started = time.time()
    if args.torrent.startswith("magnet:"):
        atp = lt.parse_magnet_uri(args.torrent)
    else:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(args.torrent)
    atp.save_path = args.save_path
    if args.no_trackers:
        atp.trackers = []
    if args.upload_mode:
        atp.flags |= lt.torrent_flags.upload_mode
        atp.flags &= ~lt.torrent_flags.auto_managed
    h = ses.add_torrent(atp)
    if args.no_trackers:
        h.replace_trackers([])
    peers = [parse_peer(p) for p in args.peer]

    deadline = time.time() + args.timeout
    last_dial = 0.0
    last_status = 0.0
    finished = False
    # Client names of every peer seen, sampled often: a transfer can be over in a second.
    seen = set()
    rc4_seen = 0
    obfuscated_seen = 0
    utp_seen = 0
    pex_seen = 0
    said_metadata = False
    while time.time() < deadline:
        for a in ses.pop_alerts():
            if isinstance(a, lt.torrent_error_alert):
                emit({"event": "error", "message": a.message()})
                sys.exit(1)
            if isinstance(a, (lt.peer_disconnected_alert, lt.peer_error_alert)):
                emit({"event": "peer_gone", "message": a.message()})
        st = h.status()
        if st.errc.value() != 0:
            emit({"event": "error", "message": st.errc.message()})
            sys.exit(1)
        checking = st.state in (
            lt.torrent_status.checking_files,
            lt.torrent_status.checking_resume_data,
        )
        now = time.time()
        if peers and not checking and st.num_peers == 0 and now - last_dial > 1.0:
            for p in peers:
                h.connect_peer(p)
            last_dial = now
        clients = peer_clients(h)
        seen.update(c for c in clients if c)
        rc4 = rc4_peers(h)
        rc4_seen = max(rc4_seen, rc4)
        obfuscated_seen = max(obfuscated_seen, obfuscated_peers(h))
        utp_seen = max(utp_seen, utp_peers(h))
        pex = pex_peers(h)
        pex_seen = max(pex_seen, pex)
        if st.has_metadata and not said_metadata:
            said_metadata = True
            emit({"event": "metadata", "seconds": time.time() - started})
        if not finished and not checking and (st.is_finished or st.is_seeding):
            finished = True
            emit(
                dict(
                    event="finished",
                    clients_seen=sorted(seen),
                    rc4_seen=rc4_seen,
                    obfuscated_seen=obfuscated_seen,
                    utp_seen=utp_seen,
                    pex_peers=pex,
                    pex_seen=pex_seen,
                    **status_fields(st, h),
                )
            )
            if not args.seed:
                return
        if now - last_status >= 0.5:
            emit(
                dict(
                    event="status",
                    clients=clients,
                    rc4=rc4,
                    rc4_seen=rc4_seen,
                    obfuscated_seen=obfuscated_seen,
                    utp_seen=utp_seen,
                    pex_peers=pex,
                    pex_seen=pex_seen,
                    **status_fields(st, h),
                )
            )
            last_status = now
        time.sleep(0.05)
    emit({"event": "timeout"})
    sys.exit(3)


if __name__ == "__main__":
    main()

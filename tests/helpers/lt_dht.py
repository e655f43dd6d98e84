#!/usr/bin/python3
"""A libtorrent DHT node on loopback for the DHT tests and benches (Debian's /usr/bin/python3).

    lt_dht.py --port PORT [--bootstrap HOST:PORT]... [--torrent T --save-path DIR [--seed]]
              [--lookup HEX]... [--timeout SECONDS]

Runs a libtorrent 2.0 session on 127.0.0.1:PORT with the DHT on and the settings a DHT needs
on loopback (every node is 127.0.0.1: no routing or search restrictions, no node id checks),
bootstrapped from the --bootstrap nodes. LSD, UPnP, NAT-PMP, uTP and encryption are off, so
peers speak plain BitTorrent over TCP. With --torrent, it adds the torrent with no trackers
(peers come from the DHT only): it downloads it into DIR and exits 0 when done, or with --seed
checks the data and seeds it until killed. With --lookup, it runs a DHT get_peers for each info
hash once its routing table has a node, and again every 2 s.

Prints one JSON object a line on stdout, flushed:
    {"event": "status", "dht_nodes", and with a torrent "state", "progress", "peers",
     "sources": the peer_info.source bits of each connected peer, "sources_seen": those of
     every peer seen so far} every half second;
    {"event": "lookup", "info_hash", "peers": ["ip:port", ...], "seconds"} per get_peers reply;
    {"event": "finished", ...} once a download completes (then exits 0 unless --seed);
    {"event": "error", "message"} on a torrent error (then exits 1).
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bootstrap", action="append", default=[])
    ap.add_argument("--torrent")
    ap.add_argument("--save-path")
    ap.add_argument("--seed", action="store_true")
    ap.add_argument("--lookup", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()

    settings = {
        "listen_interfaces": f"127.0.0.1:{args.port}",
        "outgoing_interfaces": "127.0.0.1",
        "enable_dht": True,
        # No routers: libtorrent never puts a router's address in its routing table, so two
        # nodes bootstrapping from each other would never list each other. The --bootstrap
        # nodes are added as plain nodes below instead.
        "dht_bootstrap_nodes": "",
        # On loopback every node is 127.0.0.1 (REAL-CLIENTS.md).
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_ignore_dark_internet": False,
        "dht_prefer_verified_node_ids": False,
        "dht_enforce_node_id": False,
        "dht_announce_interval": 10,
        # libtorrent blocks an IP sending over 5 packets a second (dht_block_ratelimit) for
        # 5 minutes; on loopback every node is 127.0.0.1, so dozens of nodes would be one
        # blocked flooder; and its DHT sends at most 8,000 bytes a second unless raised.
        "dht_block_ratelimit": 1000000,
        "dht_upload_rate_limit": 10000000,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "out_enc_policy": int(lt.enc_policy.disabled),
        "in_enc_policy": int(lt.enc_policy.disabled),
        # Not all categories: the peer and torrent logs would flood the alert queue and drop
        # the DHT alerts this script reads.
        "alert_mask": int(
            lt.alert.category_t.error_notification
            | lt.alert.category_t.status_notification
            | lt.alert.category_t.dht_notification
            | lt.alert.category_t.dht_operation_notification
            | lt.alert.category_t.stats_notification
        ),
        "alert_queue_size": 10000,
    }
    ses = lt.session(settings)
    h = None
    ti = None
    if args.torrent:
        ti = lt.torrent_info(args.torrent)
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = args.save_path
        atp.trackers = []
        h = ses.add_torrent(atp)
        h.replace_trackers([])

    started = time.time()
    deadline = started + args.timeout
    last_status = 0.0
    last_lookup = 0.0
    last_announce = 0.0
    last_add = 0.0
    last_stats = 0.0
    # peer_info.source bits of every peer seen (a transfer can be over between two samples).
    seen_sources = set()
    # Nodes in the routing table, from the latest dht_stats_alert (session.status() is
    # deprecated in 2.0 and its count stays 0).
    nodes = 0
    asked = {}
    finished = False
    while time.time() < deadline:
        now = time.time()
        for a in ses.pop_alerts():
            if isinstance(a, lt.torrent_error_alert):
                emit({"event": "error", "message": a.message()})
                sys.exit(1)
            if isinstance(a, lt.dht_stats_alert):
                nodes = sum(b["num_nodes"] for b in a.routing_table)
            if isinstance(a, lt.dht_get_peers_reply_alert):
                ih = str(a.info_hash)
                emit({
                    "event": "lookup",
                    "info_hash": ih,
                    "peers": [f"{ip}:{port}" for ip, port in a.peers()],
                    "seconds": now - asked.get(ih, started),
                })
        if now - last_stats >= 0.5:
            ses.post_dht_stats()
            last_stats = now
        # Add the bootstrap nodes as nodes until the table has one (one not up yet is retried).
        if nodes == 0 and now - last_add >= 1.0:
            for b in args.bootstrap:
                host, _, port = b.rpartition(":")
                ses.add_dht_node((host, int(port)))
            last_add = now
        if args.lookup and nodes > 0 and now - last_lookup >= 2.0:
            for hx in args.lookup:
                asked[hx] = now
                ses.dht_get_peers(lt.sha1_hash(bytes.fromhex(hx)))
            last_lookup = now
        status = {"event": "status", "dht_nodes": nodes}
        if h is not None:
            st = h.status()
            if st.errc.value() != 0:
                emit({"event": "error", "message": st.errc.message()})
                sys.exit(1)
            checking = st.state in (
                lt.torrent_status.checking_files,
                lt.torrent_status.checking_resume_data,
            )
            if not checking and nodes > 0 and now - last_announce >= 5.0:
                h.force_dht_announce()
                last_announce = now
            sources = [p.source for p in h.get_peer_info()]
            seen_sources.update(sources)
            status.update(
                state=str(st.state),
                progress=st.progress,
                peers=st.num_peers,
                sources=sources,
                sources_seen=sorted(seen_sources),
            )
            if not finished and not checking and (st.is_finished or st.is_seeding):
                finished = True
                emit(dict(status, event="finished"))
                if not args.seed:
                    return
        if now - last_status >= 0.5:
            emit(status)
            last_status = now
        # Finer while timing lookups (their latency is measured by this loop).
        time.sleep(0.002 if args.lookup else 0.05)
    emit({"event": "timeout"})
    sys.exit(3)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""libtorrent's view of a .torrent file, as JSON on stdout (run with Debian's /usr/bin/python3).

    lt_torrent.py info FILE.torrent
        {"info_hash", "num_pieces", "piece_length", "total_size", "name",
         "files": [{"path", "size"}], "piece_hashes": [hex...]}
    lt_torrent.py check FILE.torrent SAVE_PATH [TIMEOUT_SECONDS]
        adds the torrent with the data in SAVE_PATH, lets libtorrent check it, and prints
        {"info_hash", "num_pieces", "have": pieces libtorrent verified, "is_seeding", "state"}

Exit status 2 when libtorrent refuses the file (the error on stderr).
"""
import json
import sys
import time

import libtorrent as lt


def load(path):
    try:
        return lt.torrent_info(path)
    except RuntimeError as e:
        print(f"libtorrent refused {path}: {e}", file=sys.stderr)
        sys.exit(2)


def info(path):
    ti = load(path)
    fs = ti.files()
    files = [{"path": fs.file_path(i), "size": fs.file_size(i)} for i in range(fs.num_files())]
    hashes = [ti.hash_for_piece(i).hex() for i in range(ti.num_pieces())]
    out = {
        "info_hash": str(ti.info_hashes().v1),
        "num_pieces": ti.num_pieces(),
        "piece_length": ti.piece_length(),
        "total_size": ti.total_size(),
        "name": ti.name(),
        "files": files,
        "piece_hashes": hashes,
    }
    print(json.dumps(out))


def check(path, save_path, timeout):
    ti = load(path)
    settings = {
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "alert_mask": 0,
    }
    ses = lt.session(settings)
    atp = lt.add_torrent_params()
    atp.ti = ti
    atp.save_path = save_path
    # No trackers: nothing leaves the machine.
    atp.trackers = []
    h = ses.add_torrent(atp)
    h.replace_trackers([])
    deadline = time.time() + timeout
    done = (
        lt.torrent_status.downloading,
        lt.torrent_status.seeding,
        lt.torrent_status.finished,
    )
    # A new torrent checks its resume data, then its files, then downloads or seeds.
    while h.status().state not in done and time.time() < deadline:
        time.sleep(0.05)
    st = h.status()
    out = {
        "info_hash": str(ti.info_hashes().v1),
        "num_pieces": ti.num_pieces(),
        "have": st.num_pieces,
        "is_seeding": st.is_seeding,
        "state": str(st.state),
    }
    print(json.dumps(out))


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "info":
        info(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 60.0)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Makes a v2-only or hybrid torrent of CONTENT with libtorrent (Debian's python3-libtorrent
2.0.8) and prints libtorrent's info hashes as JSON: {"v1": hex or null, "v2": hex}.

    lt_create.py CONTENT OUT.torrent PIECE_LENGTH v2|hybrid
"""
import json
import os
import sys

import libtorrent as lt


def main(content, out, piece, kind):
    fs = lt.file_storage()
    lt.add_files(fs, content)
    flags = lt.create_torrent.v2_only if kind == "v2" else 0
    ct = lt.create_torrent(fs, int(piece), flags=flags)
    lt.set_piece_hashes(ct, os.path.dirname(os.path.abspath(content)))
    with open(out, "wb") as f:
        f.write(lt.bencode(ct.generate()))
    h = lt.torrent_info(out).info_hashes()
    v1 = None if h.v1.is_all_zeros() else str(h.v1)
    print(json.dumps({"v1": v1, "v2": str(h.v2)}))


if __name__ == "__main__":
    main(*sys.argv[1:5])

#!/usr/bin/python3
"""Makes the v2 and hybrid fixtures of engine/src/metainfo.rs with libtorrent (Debian's
python3-libtorrent 2.0.8): the same content as the Rust tests' `fixture_content`, hashed by
libtorrent, so our merkle roots and layouts are checked against another implementation.

    tests/helpers/make_v2_fixtures.py OUT_DIR

File k of a torrent holds `(i * 31 + k * 17 + i // 256) & 0xff` at byte i.
"""
import os
import sys
import tempfile

import libtorrent as lt

PIECE = 32 * 1024
# name -> list of (relative path, length); a single entry without a folder is single-file.
TORRENTS = {
    "single": [("single.bin", 100_000)],
    "small": [("small.bin", 20_000)],
    "multi": [
        ("multi/a.bin", 70_000),
        ("multi/b/c.bin", 16_384),
        ("multi/b/d.bin", 1),
        ("multi/e.bin", 200_000),
    ],
}


def content(k, length):
    return bytes(((i * 31 + k * 17 + i // 256) & 0xFF) for i in range(length))


def main(out):
    for name, files in TORRENTS.items():
        with tempfile.TemporaryDirectory() as d:
            for k, (rel, length) in enumerate(files):
                p = os.path.join(d, rel)
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "wb") as f:
                    f.write(content(k, length))
            for kind, flags in (("v2", lt.create_torrent.v2_only), ("hybrid", 0)):
                fs = lt.file_storage()
                lt.add_files(fs, os.path.join(d, files[0][0].split("/")[0]))
                ct = lt.create_torrent(fs, PIECE, flags=flags)
                lt.set_piece_hashes(ct, d)
                e = ct.generate()
                e.pop(b"creation date", None)
                e[b"created by"] = b"libtorrent 2.0.8"
                with open(os.path.join(out, f"seed-lt-{kind}-{name}.torrent"), "wb") as f:
                    f.write(lt.bencode(e))


if __name__ == "__main__":
    main(sys.argv[1])

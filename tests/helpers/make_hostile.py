#!/usr/bin/env python3
"""Writes the corpus of hostile .torrent files in tests/hostile/ (plain Python byte strings).

Each case is written as tests/hostile/NAME.torrent, and tests/hostile/expected.txt lists
"NAME<TAB>TEXT": the error shoal reports for NAME must contain TEXT (it names the key and the
problem). Run from anywhere: python3 tests/helpers/make_hostile.py
"""
import os
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "hostile")


def enc(x):
    """Bencode, keeping dict keys in insertion order (so cases can be non-canonical)."""
    if isinstance(x, bool):
        raise TypeError("no booleans in bencode")
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, str):
        x = x.encode()
    if isinstance(x, bytes):
        return b"%d:%s" % (len(x), x)
    if isinstance(x, list):
        return b"l" + b"".join(enc(i) for i in x) + b"e"
    if isinstance(x, dict):
        out = b"d"
        for k, v in x.items():
            out += enc(k) + enc(v)
        return out + b"e"
    if isinstance(x, Raw):
        return x.data
    raise TypeError(type(x))


class Raw:
    """Bytes written as they are, for malformed values."""

    def __init__(self, data):
        self.data = data


PL = 16384


def info(**over):
    """A valid single-file info dictionary of 40000 bytes (3 pieces), with overrides;
    a value of None removes the key."""
    d = {"length": 40000, "name": "file.bin", "piece length": PL, "pieces": b"\x01" * 60}
    for k, v in over.items():
        k = k.replace("_utf8", ".utf-8").replace("_", " ")
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def multi(files, **over):
    """A valid multi-file info dictionary for `files` [(path list, length)]."""
    total = sum(max(n, 0) if isinstance(n, int) else 0 for _, n in files)
    count = (total + PL - 1) // PL
    pieces = b"\x02" * (20 * count) if count < 10000 else b""
    d = {
        "files": [{"length": n, "path": p} for p, n in files],
        "name": "folder",
        "piece length": PL,
        "pieces": pieces,
    }
    d.update(over)
    return d


def torrent(inf, **top):
    d = {"announce": "http://127.0.0.1:1/announce"}
    for k, v in top.items():
        k = k.replace("_", " ").replace("announce list", "announce-list")
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    d["info"] = inf
    return enc(d)


GOOD = torrent(info())
I64_MAX = 2**63 - 1

CASES = [
    # Not bencode at all, or broken bencode.
    ("not_bencode", b"hello, this is not a torrent\n", "malformed bencode"),
    ("empty_file", b"", "malformed bencode"),
    ("truncated", GOOD[:-10], "malformed bencode"),
    ("trailing_garbage", GOOD + b"xyz", "trailing bytes"),
    ("dict_key_not_string", b"di1e4:spame", "key is not a string"),
    ("dict_key_without_value", b"d4:infoe", "without a value"),
    ("integer_overflow", torrent(info(length=Raw(b"i99999999999999999999e"))), "out of range"),
    ("integer_leading_zero", torrent(info(piece_length=Raw(b"i016384e"))), "leading zero"),
    ("integer_negative_zero", torrent(info(length=Raw(b"i-0e"))), "negative zero"),
    ("integer_empty", torrent(info(length=Raw(b"ie"))), "malformed bencode"),
    ("string_length_overflow", b"d99999999999999999999999:", "out of range"),
    ("string_longer_than_input", b"d4294967296:abc", "longer than the input"),
    ("deeply_nested_lists", b"d1:x" + b"l" * 100000 + b"e" * 100000 + b"e", "nests deeper"),
    (
        "deeply_nested_in_info",
        torrent(info(junk=Raw(b"d1:a" * 5000 + b"i1e" + b"e" * 5000))),
        "nests deeper",
    ),
    # Wrong shapes.
    ("top_level_list", enc([info()]), "should be a dictionary"),
    ("top_level_integer", b"i42e", "should be a dictionary"),
    ("missing_info", enc({"announce": "http://127.0.0.1:1/"}), 'missing key "info"'),
    ("info_is_string", torrent("not a dict"), '"info" should be a dictionary'),
    ("info_is_list", torrent([1, 2]), '"info" should be a dictionary'),
    ("missing_name", torrent(info(name=None)), 'missing key "name"'),
    ("name_is_integer", torrent(info(name=5)), '"name" should be a string'),
    ("name_not_utf8", torrent(info(name=b"\xff\xfe.bin")), "not valid utf-8"),
    ("missing_piece_length", torrent(info(piece_length=None)), 'missing key "piece length"'),
    ("piece_length_is_string", torrent(info(piece_length="16384")), '"piece length" should be an integer'),
    ("missing_pieces", torrent(info(pieces=None)), 'missing key "pieces"'),
    ("pieces_is_list", torrent(info(pieces=[b"\x01" * 20])), '"pieces" should be a string'),
    ("length_is_string", torrent(info(length="40000")), '"length" should be an integer'),
    ("files_is_dict", torrent(info(length=None, files={"a": 1})), '"files" should be a list'),
    ("file_entry_is_list", torrent(multi([]) | {"files": [[1]]}), '"files[0]" should be a dictionary'),
    ("file_missing_length", torrent(multi([]) | {"files": [{"path": ["a"]}]}), 'missing key "files[0].length"'),
    ("file_missing_path", torrent(multi([]) | {"files": [{"length": 1}]}), 'missing key "files[0].path"'),
    ("path_is_string", torrent(multi([("a", 10)])), '"files[0].path" should be a list'),
    ("path_component_is_integer", torrent(multi([([1], 10)])), '"files[0].path" should be a string'),
    ("both_length_and_files", torrent(multi([(["a"], 10)]) | {"length": 10}), "both"),
    ("neither_length_nor_files", torrent(info(length=None)), "missing key"),
    ("announce_is_integer", torrent(info(), announce=5), '"announce" should be a string'),
    ("announce_list_is_string", torrent(info(), announce_list="http://x/"), '"announce-list" should be a list'),
    ("announce_tier_is_string", torrent(info(), announce_list=["http://x/"]), '"announce-list[0]" should be a list'),
    ("private_is_string", torrent(info(private="1")), '"private" should be an integer'),
    ("creation_date_is_string", torrent(info(), creation_date="today"), '"creation date" should be an integer'),
    ("duplicate_key", torrent(Raw(enc(info())[:-1] + b"4:name5:other" + b"e")), 'key "name" appears twice'),
    # Lengths that do not add up.
    ("piece_length_zero", torrent(info(piece_length=0)), '"piece length"'),
    ("piece_length_negative", torrent(info(piece_length=-16384)), '"piece length"'),
    ("piece_length_huge", torrent(info(piece_length=2**40)), '"piece length"'),
    ("pieces_not_multiple_of_20", torrent(info(pieces=b"\x01" * 61)), "not a multiple of 20"),
    ("pieces_too_few", torrent(info(pieces=b"\x01" * 40)), '"pieces" holds 2 hashes'),
    ("pieces_too_many", torrent(info(pieces=b"\x01" * 80)), '"pieces" holds 4 hashes'),
    ("length_negative", torrent(info(length=-1)), "negative length"),
    ("file_length_negative", torrent(multi([(["a"], 10), (["b"], -5)])), '"files[1].length": negative length'),
    ("file_lengths_overflow", torrent(multi([(["a"], I64_MAX), (["b"], I64_MAX), (["c"], I64_MAX)]) | {"pieces": b""}), "overflows"),
    ("too_many_pieces", torrent(info(length=I64_MAX, piece_length=1, pieces=b"")), "more than the maximum"),
    ("empty_single_file", torrent(info(length=0, pieces=b"")), "no data"),
    ("empty_file_list", torrent(multi([])), "no data"),
    ("only_empty_files", torrent(multi([(["a"], 0), (["b"], 0)])), "no data"),
    # Names and paths that would write outside the download folder.
    ("name_empty", torrent(info(name="")), "unsafe path component"),
    ("name_dot", torrent(info(name=".")), "unsafe path component"),
    ("name_dotdot", torrent(info(name="..")), "unsafe path component"),
    ("name_absolute", torrent(info(name="/etc/passwd")), "unsafe path component"),
    ("name_with_slash", torrent(info(name="a/../../b")), "unsafe path component"),
    ("name_with_backslash", torrent(info(name="..\\..\\evil")), "unsafe path component"),
    ("name_with_nul", torrent(info(name="a\x00b")), "unsafe path component"),
    ("name_utf8_dotdot", torrent(info(name_utf8="..")), '"name.utf-8": unsafe path component'),
    ("path_empty_list", torrent(multi([([], 10)])), "empty path"),
    ("path_component_empty", torrent(multi([(["a", "", "b"], 10)])), "unsafe path component"),
    ("path_component_dot", torrent(multi([(["."], 10)])), "unsafe path component"),
    ("path_component_dotdot", torrent(multi([(["..", "..", "etc", "passwd"], 10)])), "unsafe path component"),
    ("path_component_absolute", torrent(multi([(["/etc/passwd"], 10)])), "unsafe path component"),
    ("path_component_with_slash", torrent(multi([(["a/../../b"], 10)])), "unsafe path component"),
    ("path_component_with_backslash", torrent(multi([(["..\\evil"], 10)])), "unsafe path component"),
    ("path_component_with_nul", torrent(multi([(["a\x00b"], 10)])), "unsafe path component"),
    ("path_component_not_utf8", torrent(multi([([b"\xff"], 10)])), "not valid utf-8"),
    (
        "path_utf8_dotdot",
        torrent(multi([]) | {"files": [{"length": 10, "path": ["ok"], "path.utf-8": ["..", "x"]}]}),
        '"files[0].path.utf-8": unsafe path component',
    ),
    ("duplicate_paths", torrent(multi([(["a", "b"], 10), (["a", "b"], 10)])), 'duplicate file path "folder/a/b"'),
    ("file_is_also_folder", torrent(multi([(["a"], 10), (["a", "b"], 10)])), 'duplicate file path "folder/a"'),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    for old in os.listdir(OUT):
        if old.endswith(".torrent"):
            os.remove(os.path.join(OUT, old))
    names = set()
    lines = []
    for name, data, expect in CASES:
        assert name not in names, name
        names.add(name)
        with open(os.path.join(OUT, name + ".torrent"), "wb") as f:
            f.write(data)
        lines.append(f"{name}\t{expect}\n")
    with open(os.path.join(OUT, "expected.txt"), "w") as f:
        f.write("# NAME<TAB>text the error must contain; written by tests/helpers/make_hostile.py\n")
        f.writelines(lines)
    print(f"wrote {len(CASES)} hostile torrents to {os.path.normpath(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()

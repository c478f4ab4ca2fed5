#!/usr/bin/env python3
"""Writes the seed corpus under corpus/<target>/ from the documented byte layouts.

Frame: u32 BE length of the rest, u8 format = 1, u64 BE sequence number, postcard body (the
Message variant index as a varint, then its fields; integers are varints, strings are a varint
length and UTF-8 bytes). Run from fuzz/: `python3 seeds.py`. Needs `cryptography` for the
signed JWT seeds (skipped without it).
"""

import base64
import hashlib
import json
import os
import struct

HEARTBEAT, ERROR, GOODBYE = 3, 10, 11
ERROR_CODE_INTERNAL = 7


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def string(s):
    b = s.encode()
    return varint(len(b)) + b


def frame(seq, body, fmt=1):
    rest = bytes([fmt]) + struct.pack(">Q", seq) + body
    return struct.pack(">I", len(rest)) + rest


def heartbeat(seq, hb_id):
    return frame(seq, varint(HEARTBEAT) + varint(hb_id))


def write(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data)


# frame_decode: valid frames, two frames back to back, and broken headers.
hb = heartbeat(1, 42)
write("frame_decode", "heartbeat", hb)
write("frame_decode", "goodbye", frame(7, varint(GOODBYE) + string("shutting down")))
error_body = varint(ERROR) + varint(ERROR_CODE_INTERNAL) + string("table \"main\".\"t\"") + b"\x00"
write("frame_decode", "error", frame(2, error_body))
write("frame_decode", "two_frames", hb + heartbeat(2, 43))
write("frame_decode", "truncated", hb[:-1])
write("frame_decode", "bad_format", heartbeat(1, 42)[:4] + b"\x02" + hb[5:])
write("frame_decode", "too_large", b"\xff\xff\xff\xff\x01")
write("frame_decode", "unknown_variant", frame(1, varint(99)))

# sealed_open: mode byte, then payload.
write("sealed_open", "raw_sealed_shape", b"\x00" + b"\x00" * 8 + b"\x5a" * 13 + b"\x00" * 16)
write("sealed_open", "plain_heartbeat", b"\x01" + hb)
write("sealed_open", "plain_wrong_seq", b"\x01" + heartbeat(2, 42))
write("sealed_open", "plain_garbage", b"\x01" + b"\x00\x00\x00\x02\x01\x00")
write("sealed_open", "untouched", b"\x02\x00")
write("sealed_open", "flip_counter", b"\x02\x00\x01")
write("sealed_open", "flip_tag_end", b"\x02\x00" + b"\x00" * 30 + b"\x80")
write("sealed_open", "truncate", b"\x02\x09")

# secret_open: mode byte (0: the blob itself; 1: a mask over a fresh sealed blob; 2: a payload
# after a valid version-1 header). Blob: b"tgs", format 1, u32 BE data-key version, 24-byte
# nonce, ciphertext, 16-byte tag; the fuzz secret is 43 bytes, so a fresh blob is 91 bytes.
blob_shape = b"tgs\x01" + struct.pack(">I", 1) + b"\x07" * 24 + b"\x5a" * 43 + b"\x00" * 16
write("secret_open", "raw_blob_shape", b"\x00" + blob_shape)
write("secret_open", "raw_bad_magic", b"\x00" + b"tgz" + blob_shape[3:])
write("secret_open", "raw_format_2", b"\x00" + b"tgs\x02" + blob_shape[4:])
write("secret_open", "raw_short", b"\x00tgs\x01\x00\x00")
write("secret_open", "untouched", b"\x01")
write("secret_open", "flip_version", b"\x01" + b"\x00" * 7 + b"\x03")
write("secret_open", "flip_nonce", b"\x01" + b"\x00" * 20 + b"\x10")
write("secret_open", "flip_tag_end", b"\x01" + b"\x00" * 90 + b"\x80")
write("secret_open", "header_then_garbage", b"\x02" + b"\x01" * 24 + b"garbage" * 10)

# jwt_verify: mode byte (even: the token itself; odd: a mask over a fresh valid token).
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


write("jwt_verify", "garbage", b"\x00not.a.jwt")
write("jwt_verify", "empty", b"\x00")
none_header = b64(b'{"alg":"none","typ":"JWT","kid":"gw-fuzz"}')
binding_hash = b64(hashlib.sha256(b"exported keying material of the fuzz TLS session").digest())
claims = {
    "iss": "gw-fuzz", "sub": "gw-fuzz", "aud": "cp-fuzz",
    "iat": 1_000_000_000, "nbf": 1_000_000_000, "exp": 1_000_000_060,
    "jti": "seed", "cbh": binding_hash,
}
claims_b64 = b64(json.dumps(claims, separators=(",", ":")).encode())
write("jwt_verify", "alg_none", f"\x00{none_header}.{claims_b64}.".encode())
write("jwt_verify", "untouched", b"\x01")
write("jwt_verify", "flip_claims_byte", b"\x01" + b"\x00" * 200 + b"\x01")
try:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(b"\x42" * 32)
    header = b64(b'{"typ":"JWT","alg":"EdDSA","kid":"gw-fuzz"}')
    signing_input = f"{header}.{claims_b64}"
    signature = b64(key.sign(signing_input.encode()))
    write("jwt_verify", "signed_expired", f"\x00{signing_input}.{signature}".encode())
    long_lived = dict(claims, exp=claims["iat"] + 3600)
    long_b64 = b64(json.dumps(long_lived, separators=(",", ":")).encode())
    signing_input = f"{header}.{long_b64}"
    write("jwt_verify", "signed_long_lived",
          f"\x00{signing_input}.{b64(key.sign(signing_input.encode()))}".encode())
except ImportError:
    print("cryptography is not installed: skipped the signed JWT seeds")

# pgoutput_decode: flags byte (bit 0: binary values), then messages, each behind a u16 BE
# length. Message layouts: PostgreSQL's "Logical Replication Message Formats", protocol 2.
def pg_message(tag, *fields):
    return tag + b"".join(fields)


def u8(n):
    return struct.pack(">B", n)


def i16(n):
    return struct.pack(">h", n)


def u32(n):
    return struct.pack(">I", n)


def i32(n):
    return struct.pack(">i", n)


def u64(n):
    return struct.pack(">Q", n)


def cstr(s):
    return s.encode() + b"\x00"


def tuple_data(columns):
    """columns: None (NULL), "u" (unchanged TOAST), or (kind, bytes)."""
    out = i16(len(columns))
    for column in columns:
        if column is None:
            out += b"n"
        elif column == "u":
            out += b"u"
        else:
            kind, value = column
            out += kind + i32(len(value)) + value
    return out


def sequence(flags, messages):
    return bytes([flags]) + b"".join(struct.pack(">H", len(m)) + m for m in messages)


REL = 16384
# id int4 (key), note text, amount numeric(12,2), at timestamptz
relation = pg_message(
    b"R", u32(REL), cstr("public"), cstr("orders"), b"d", i16(4),
    u8(1), cstr("id"), u32(23), i32(-1),
    u8(0), cstr("note"), u32(25), i32(-1),
    u8(0), cstr("amount"), u32(1700), i32((12 << 16 | 2) + 4),
    u8(0), cstr("at"), u32(1184), i32(-1),
)
numeric_12345_67 = struct.pack(">hhHH", 3, 1, 0, 2) + struct.pack(">hhh", 1, 2345, 6700)
row = [(b"b", i32(1)), (b"b", b"hello"), (b"b", numeric_12345_67), (b"b", u64(1000))]
begin = pg_message(b"B", u64(0x1000), u64(1000), u32(700))
commit = pg_message(b"C", u8(0), u64(0x1000), u64(0x1010), u64(1000))
insert = pg_message(b"I", u32(REL), b"N", tuple_data(row))
update = pg_message(b"U", u32(REL), b"K", tuple_data([(b"b", i32(1)), None, None, None]),
                    b"N", tuple_data([(b"b", i32(2)), "u", None, (b"b", u64(5))]))
delete = pg_message(b"D", u32(REL), b"K", tuple_data([(b"b", i32(2)), None, None, None]))
truncate = pg_message(b"T", u32(1), u8(0), u32(REL))
write("pgoutput_decode", "transaction",
      sequence(1, [begin, relation, insert, insert, update, delete, insert, truncate, commit]))
text_row = [(b"t", b"1"), (b"t", b"hello"), (b"t", b"12345.67"), None]
write("pgoutput_decode", "text_values",
      sequence(0, [begin, relation, pg_message(b"I", u32(REL), b"N", tuple_data(text_row)), commit]))
XID = 800
stream_start = pg_message(b"S", u32(XID), u8(1))
streamed_relation = b"R" + u32(XID) + relation[1:]
streamed_insert = pg_message(b"I", u32(XID), u32(REL), b"N", tuple_data(row))
stream_stop = b"E"
stream_commit = pg_message(b"c", u32(XID), u8(0), u64(0x2000), u64(0x2010), u64(2000))
write("pgoutput_decode", "streamed",
      sequence(1, [stream_start, streamed_relation, streamed_insert, streamed_insert, stream_stop,
                   stream_start, streamed_insert, stream_stop,
                   pg_message(b"A", u32(XID), u32(XID + 1)), stream_commit]))
write("pgoutput_decode", "one_relation", b"\x01" + relation)
write("pgoutput_decode", "message",
      sequence(1, [pg_message(b"M", u8(1), u64(7), cstr("prefix"), i32(3), b"abc"),
                   pg_message(b"O", u64(7), cstr("origin")),
                   pg_message(b"Y", u32(90000), cstr("public"), cstr("mood"))]))

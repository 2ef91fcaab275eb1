#!/usr/bin/env python3
"""Instructions a call of the server's hot paths, counted by callgrind: deterministic.

The server-bound benchmark (`cargo bench --bench loadgen -- --server-bound`) measures what a
call costs in time, which this host's neighbours move by ±20 % from one round to the next.
This counts the user-space instructions the server executes per call instead — the same
figure on every run of the same build — to tell whether a change to a hot path made it
cheaper. It leaves out the kernel's share and how fast each instruction runs (valgrind, for
one, runs SHA-256 without the CPU's SHA extensions: ~38 000 instructions for a 1 KiB token's
digest that take ~2 000 cycles on the hardware), so it complements the timed ratios and does
not replace them.

    python3 benches/instructions.py target/release/sessiongate [calls] [--keep DIR]

`--keep DIR` keeps each path's callgrind profile there (`callgrind_annotate DIR/check.out`
shows where its instructions go).

Needs valgrind, h2load (nghttp2-client), redis-server, curl and openssl. The server runs
under callgrind with one worker thread; each path gets a warm-up, then `calls` calls from
h2load (4 connections x 16 streams) between a zeroing and a dump of the counters.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

API_KEY = "instructions-key"


def varint(n):
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num, value):
    """A protobuf field: an int is a varint, bytes are length-delimited."""
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    return varint((num << 3) | 2) + varint(len(value)) + value


def fields(buf):
    """The top-level fields of a protobuf message (last one wins)."""
    i, out = 0, {}

    def read_varint():
        nonlocal i
        n = shift = 0
        while True:
            b = buf[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    while i < len(buf):
        tag = read_varint()
        if tag & 7 == 0:
            out[tag >> 3] = read_varint()
        elif tag & 7 == 2:
            n = read_varint()
            out[tag >> 3] = buf[i : i + n]
            i += n
        else:
            raise ValueError(f"wire type {tag & 7}")
    return out


def grpc_frame(msg):
    return b"\0" + len(msg).to_bytes(4, "big") + msg


def envoy_check(token):
    """What Envoy asks about a `GET /orders` carrying `token` (as the loadgen's `envoy_check`)."""
    headers = b"".join(
        field(3, field(1, k) + field(2, v))
        for k, v in [
            (b"authorization", b"Bearer " + token),
            (b":authority", b"shop.example.com"),
            (b"user-agent", b"Mozilla/5.0"),
        ]
    )
    http = field(2, b"GET") + headers + field(4, b"/orders") + field(5, b"shop.example.com")
    return grpc_frame(field(1, field(4, field(2, http))))


def main():
    args = sys.argv[1:]
    keep = None
    if "--keep" in args:
        i = args.index("--keep")
        keep = os.path.abspath(args[i + 1])
        del args[i : i + 2]
        os.makedirs(keep, exist_ok=True)
    binary = os.path.abspath(args[0] if args else "target/release/sessiongate")
    calls = int(args[1]) if len(args) > 1 else 2000
    work = tempfile.TemporaryDirectory()
    d = work.name
    redis = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", f"{d}/redis.sock", "--save", "", "--dir", d],
        stdout=subprocess.DEVNULL,
    )
    key = f"{d}/signing.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key],
        check=True,
        capture_output=True,
    )
    config = f"{d}/sessiongate.toml"
    with open(config, "w") as f:
        f.write(
            f'[native]\nsigning_keys = ["{key}"]\n[[clients]]\nname = "instructions"\n'
            f'key_sha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"\n'
            'scopes = ["validate", "issue"]\n'
        )
    env = {
        "PATH": os.environ["PATH"],
        "SESSIONGATE_CONFIG": config,
        "REDIS_URL": f"redis+unix://{d}/redis.sock",
        "SESSIONGATE_GRPC_ADDR": "127.0.0.1:0",
        "SESSIONGATE_HTTP_ADDR": "127.0.0.1:0",
        "SESSIONGATE_LOG_FORMAT": "json",
        "RUST_LOG": "info",
        "TOKIO_WORKER_THREADS": "1",
    }
    out = f"{d}/callgrind.out"
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary],
        env=env,
        cwd=d,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The server says where it serves once it does; valgrind's own lines come first.
        addr = None
        for line in server.stderr:
            if '"sessiongate serving"' in line:
                addr = json.loads(line)["grpc_addr"]
                break
        if addr is None:
            sys.exit("the server stopped before serving")
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()

        def call(rpc, body):
            req = f"{d}/call.bin"
            with open(req, "wb") as f:
                f.write(body)
            r = subprocess.run(
                ["curl", "-sS", "--http2-prior-knowledge", "-H", "content-type: application/grpc",
                 "-H", "te: trailers", "-H", f"authorization: Bearer {API_KEY}",
                 "--data-binary", f"@{req}", f"http://{addr}{rpc}"],
                capture_output=True,
                check=True,
            )
            return fields(r.stdout[5:])

        created = call(
            "/sessiongate.v1.SessionGateService/CreateSession",
            grpc_frame(field(2, field(1, b"instructions@example.com"))),
        )
        jwt = created[5]  # session_jwt
        # name: (file name with --keep, RPC, request)
        paths = {
            "Health/Check (baseline)": ("health", "/grpc.health.v1.Health/Check", grpc_frame(b"")),
            "ValidateSession, malformed JWT-sized token (floor)": (
                "floor",
                "/sessiongate.v1.SessionGateService/ValidateSession",
                grpc_frame(field(1, b"a" * len(jwt)) + field(5, 1)),
            ),
            "ValidateSession, cached JWT, BASIC": (
                "basic",
                "/sessiongate.v1.SessionGateService/ValidateSession",
                grpc_frame(field(1, jwt) + field(5, 1)),
            ),
            "Envoy Authorization/Check, malformed JWT-sized token (floor)": (
                "check_floor",
                "/envoy.service.auth.v3.Authorization/Check",
                envoy_check(b"!" * len(jwt)),
            ),
            "Envoy Authorization/Check, cached JWT": (
                "check",
                "/envoy.service.auth.v3.Authorization/Check",
                envoy_check(jwt),
            ),
        }
        # Each path answers as it should before it is counted: a path that fails cheaply
        # would read as a fast one.
        v = call(*paths["ValidateSession, cached JWT, BASIC"][1:])
        assert v.get(1) == 1, f"the JWT is not VALID: {v}"
        v = call(*paths["ValidateSession, malformed JWT-sized token (floor)"][1:])
        assert v.get(1) == 2, f"the malformed token is not INVALID: {v}"
        c = call(*paths["Envoy Authorization/Check, cached JWT"][1:])
        assert 3 in c and fields(c.get(1, b"")).get(1, 0) == 0, f"Check did not allow: {c}"
        c = call(*paths["Envoy Authorization/Check, malformed JWT-sized token (floor)"][1:])
        assert 2 in c and fields(c[1]).get(1) == 16, f"Check did not deny: {c}"

        def ctl(*args):
            subprocess.run(["callgrind_control", *args, str(server.pid)], check=True, capture_output=True)

        results = {}
        for name, (short, rpc, body) in paths.items():
            req = f"{d}/h2load.bin"
            with open(req, "wb") as f:
                f.write(body)
            h2load = ["h2load", "-c", "4", "-m", "16", "-d", req, "-H", "content-type: application/grpc",
                      "-H", "te: trailers", "-H", f"authorization: Bearer {API_KEY}", f"http://{addr}{rpc}"]
            subprocess.run([*h2load, "-n", "500"], check=True, capture_output=True)
            ctl("-z")
            r = subprocess.run([*h2load, "-n", str(calls)], check=True, capture_output=True, text=True)
            assert f"{calls} succeeded" in r.stdout, r.stdout
            before = set(os.listdir(d))
            ctl("-d")
            dumps = [f for f in os.listdir(d) if f not in before and f.startswith("callgrind.out")]
            dump = os.path.join(d, max(dumps))
            if keep:
                shutil.copy(dump, os.path.join(keep, f"{short}.out"))
            with open(dump) as f:
                total = int(re.search(r"^(?:summary|totals):\s+(\d+)", f.read(), re.M).group(1))
            results[name] = round(total / calls)
            print(f"{results[name]:>9,} instructions a call  {name}", flush=True)
        print(json.dumps(results))
    finally:
        server.terminate()
        server.wait()
        redis.terminate()
        redis.wait()


if __name__ == "__main__":
    main()

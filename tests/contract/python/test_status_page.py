"""/status in a real headless browser (Debian's chromium): the page renders — the browser's own
DOM has the rollouts and the share on NEW — with no script allowed by its policy, and a
screenshot of it is taken (docs/status.png is one)."""
import os
import pathlib
import shutil
import subprocess
import tempfile
import urllib.request

import pytest

from conftest import KEY, _sha, bounded_channel, pb, rpc, spawn_sessiongate

AUTH = [("authorization", f"Bearer {KEY}")]


def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        # scripts/test installs Debian's package; Ubuntu has only a snap wrapper.
        pytest.skip("no chromium on this machine: the /status page was not checked in a browser")
    return path


def browse(url, *args):
    # As root in CI: no sandbox. A fresh profile each time.
    profile = tempfile.mkdtemp(prefix="sessiongate-chromium-")
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", *args, url],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout


def test_the_status_page_renders_in_a_real_browser():
    work = pathlib.Path(tempfile.mkdtemp(prefix="sessiongate-py-status-"))
    (work / "sessiongate.toml").write_text(f"""
[[clients]]
name = "python-status"
key_sha256 = "{_sha(KEY)}"
scopes = ["validate", "issue", "admin"]

[[flows]]
name = "login"
percentage = 0
stickiness = "device"
[[flows.ramp]]
percentage = 5
hold_minutes = 1440
[[flows.ramp]]
percentage = 25
hold_minutes = 1440
[[flows.ramp]]
percentage = 100

[[flows]]
name = "checkout"
percentage = 40
""")
    proc, (grpc_addr, http_addr) = spawn_sessiongate(work)
    try:
        raw, ch = bounded_channel(grpc_addr)
        api = rpc.SessionGateServiceStub(ch)
        for _ in range(3):
            s = api.CreateSession(pb.CreateSessionRequest(new_user=pb.NewUser()), metadata=AUTH)
            assert api.ValidateSession(pb.ValidateSessionRequest(token=s.session_token),
                                       metadata=AUTH).verdict == pb.VERDICT_VALID
        raw.close()
        url = f"http://{http_addr}/status"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.headers["content-type"] == "text/html; charset=utf-8"
            assert "default-src 'none'" in r.headers["content-security-policy"]
        dom = browse(url, "--dump-dom")
        assert "<h2>Rollouts</h2>" in dom and "<td>checkout</td><td>40 %</td>" in dom, dom
        assert 'id="new-share">3 (100.0 %)' in dom, dom
        shot = pathlib.Path(tempfile.mkdtemp()) / "status.png"
        browse(url, f"--screenshot={shot}", "--window-size=1000,700")
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        keep = os.environ.get("SESSIONGATE_STATUS_SCREENSHOT")
        if keep:  # how docs/status.png is made
            shutil.copy(shot, keep)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

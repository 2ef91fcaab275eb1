"""Verifies a sessiongate session_jwt the way a Python service would offline: PyJWT and
nothing but the public JWKS from /.well-known/jwks.json.

Usage: verify_jwt_offline.py JWKS_URL JWT ISSUER AUDIENCE EXPECTED_SUB
"""
import json
import sys
import urllib.request

import jwt  # PyJWT


def main() -> int:
    jwks_url, token, issuer, audience, expected_sub = sys.argv[1:6]
    with urllib.request.urlopen(jwks_url, timeout=5) as r:
        jwks = json.load(r)
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    key = jwt.PyJWK.from_dict(jwk)
    claims = jwt.decode(
        token,
        key=key.key,
        algorithms=[jwk["alg"]],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "sub", "iss", "aud"]},
    )
    assert claims["sub"] == expected_sub, claims
    assert claims["sid"].startswith("session-test-"), claims
    # A tampered token must fail.
    head, body, sig = token.split(".")
    forged = ".".join([head, body, sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")])
    try:
        jwt.decode(forged, key=key.key, algorithms=[jwk["alg"]], audience=audience, issuer=issuer)
    except jwt.InvalidSignatureError:
        pass
    else:
        raise AssertionError("PyJWT accepted a forged signature")
    print(f"PyJWT verified the session_jwt with the JWKS only ({jwk['alg']}, kid {kid[:8]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

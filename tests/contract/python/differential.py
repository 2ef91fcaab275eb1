"""PyJWT's verdicts on a corpus of tokens (run by tests/it/differential.rs).

Reads the corpus JSON named by argv[1] — the issuer's JWKS, the issuer, the audience, the
leeway, the allowed algorithms and the tokens — and prints one JSON list: for each token,
whether PyJWT, configured as strictly as its documentation allows, accepts it.
"""

import json
import sys

import jwt


def accepts(token, corpus, keys):
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        key = keys.get(kid)
        if key is None:
            return False
        jwt.decode(
            token,
            key.key,
            algorithms=corpus["algorithms"],
            audience=corpus["audience"],
            issuer=corpus["issuer"],
            leeway=corpus["leeway"],
            options={"require": ["exp", "iss", "aud", "sub"], "verify_signature": True},
        )
        return True
    except Exception:  # every refusal, whatever its kind, is a refusal
        return False


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        corpus = json.load(f)
    keys = {}
    for jwk in corpus["jwks"]["keys"]:
        try:
            keys[jwk.get("kid")] = jwt.PyJWK.from_dict(jwk)
        except Exception:
            pass
    print(json.dumps([accepts(t, corpus, keys) for t in corpus["tokens"]]))


if __name__ == "__main__":
    main()

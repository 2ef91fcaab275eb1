// jose's verdicts on a corpus of tokens (run by tests/it/differential.rs).
//
// Reads the corpus JSON named by argv[2] — the issuer's JWKS, the issuer, the audience, the
// leeway, the allowed algorithms and the tokens — and prints one JSON list: for each token,
// whether jose's jwtVerify accepts it.
import { readFileSync } from 'node:fs';
import { createLocalJWKSet, jwtVerify } from 'jose';

const corpus = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const keys = createLocalJWKSet(corpus.jwks);
const verdicts = [];
for (const token of corpus.tokens) {
  try {
    await jwtVerify(token, keys, {
      issuer: corpus.issuer,
      audience: corpus.audience,
      algorithms: corpus.algorithms,
      clockTolerance: corpus.leeway,
      requiredClaims: ['exp', 'iss', 'aud', 'sub'],
    });
    verdicts.push(true);
  } catch {
    verdicts.push(false);
  }
}
process.stdout.write(JSON.stringify(verdicts));

//! The few DER structures sessiongate writes itself (private JWKs to PKCS#1/PKCS#8, public
//! JWK components to PKCS#1 `RSAPublicKey`): lengths, INTEGERs and SEQUENCEs, nothing more.

fn der_len(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes: Vec<u8> = len
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

/// Tag, length, value.
pub fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(body.len()));
    out.extend(body);
    out
}

/// A non-negative INTEGER from big-endian bytes.
pub fn der_integer(be: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = match be.iter().position(|b| *b != 0) {
        Some(i) => &be[i..],
        None => &[0],
    };
    let mut body = Vec::with_capacity(trimmed.len() + 1);
    if trimmed[0] & 0x80 != 0 {
        body.push(0);
    }
    body.extend(trimmed);
    der_tlv(0x02, &body)
}

/// PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus, publicExponent }`.
pub fn rsa_public_key(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = der_integer(n);
    body.extend(der_integer(e));
    der_tlv(0x30, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_lengths() {
        assert_eq!(der_integer(&[0]), [0x02, 0x01, 0x00]);
        assert_eq!(der_integer(&[0x00, 0x7f]), [0x02, 0x01, 0x7f]);
        assert_eq!(der_integer(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(der_len(0x7f), [0x7f]);
        assert_eq!(der_len(0x80), [0x81, 0x80]);
        assert_eq!(der_len(0x1234), [0x82, 0x12, 0x34]);
        assert_eq!(
            rsa_public_key(&[0x01], &[0x03]),
            [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x03]
        );
    }
}

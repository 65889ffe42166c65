//! Just enough DER to read and write `RSAPrivateKey` (RFC 8017) and unwrap PKCS#8: SEQUENCE,
//! INTEGER and OCTET STRING with definite lengths. Anything else is rejected, not guessed.

pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;

/// Reads one TLV from the front of `input`; returns (tag, contents, rest).
pub(crate) fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        // Four length bytes cover any key we could meet; more means garbage.
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len_bytes, after) = rest.split_at(count);
        rest = after;
        len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// Reads one TLV that must carry `tag`.
pub(crate) fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = read_tlv(input)?;
    (found == tag).then_some((contents, rest))
}

/// An unsigned INTEGER's magnitude, big-endian, without the sign-padding zero bytes.
pub(crate) fn unsigned_magnitude(contents: &[u8]) -> &[u8] {
    let start = contents
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(contents.len().saturating_sub(1));
    &contents[start..]
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

pub(crate) fn write_tlv(out: &mut Vec<u8>, tag: u8, contents: &[u8]) {
    out.push(tag);
    push_len(out, contents.len());
    out.extend_from_slice(contents);
}

/// Writes a non-negative INTEGER from a big-endian magnitude.
pub(crate) fn write_unsigned(out: &mut Vec<u8>, magnitude: &[u8]) {
    let magnitude = unsigned_magnitude(magnitude);
    let mut contents = Vec::with_capacity(magnitude.len() + 1);
    // An empty magnitude is zero; a set high bit would read as negative. Both need a zero byte.
    if magnitude.first().is_none_or(|&b| b & 0x80 != 0) {
        contents.push(0);
    }
    contents.extend_from_slice(magnitude);
    write_tlv(out, TAG_INTEGER, &contents);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_with_sign_padding() {
        for magnitude in [
            &[0x00u8][..],
            &[0x01],
            &[0x7f],
            &[0x80],
            &[0x01, 0x00, 0x01],
        ] {
            let mut out = Vec::new();
            write_unsigned(&mut out, magnitude);
            let (contents, rest) = expect(&out, TAG_INTEGER).unwrap();
            assert!(rest.is_empty());
            assert_eq!(unsigned_magnitude(contents), unsigned_magnitude(magnitude));
        }
        let mut out = Vec::new();
        write_unsigned(&mut out, &[0x80]);
        assert_eq!(out, [0x02, 0x02, 0x00, 0x80]);
        let mut zero = Vec::new();
        write_unsigned(&mut zero, &[]);
        assert_eq!(zero, [0x02, 0x01, 0x00]);
    }

    #[test]
    fn long_lengths_round_trip_and_truncation_is_rejected() {
        let body = vec![7u8; 300];
        let mut out = Vec::new();
        write_tlv(&mut out, TAG_OCTET_STRING, &body);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (tag, contents, rest) = read_tlv(&out).unwrap();
        assert_eq!(
            (tag, contents, rest.len()),
            (TAG_OCTET_STRING, &body[..], 0)
        );
        assert!(read_tlv(&out[..out.len() - 1]).is_none());
        assert!(expect(&out, TAG_SEQUENCE).is_none());
    }
}

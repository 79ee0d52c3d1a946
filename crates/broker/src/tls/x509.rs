//! Just enough X.509 to verify an X.509 v1 client certificate, which rustls-webpki refuses
//! to parse: the signed envelope, the TBS fields a v1 certificate has, and the two DER time
//! forms. v1 is what `openssl x509 -req` makes without an extension file, the recipe in
//! Mosquitto's TLS guides.
//!
//! ```text
//! Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier,
//!                            signatureValue BIT STRING }
//! TBSCertificate ::= SEQUENCE { [0] EXPLICIT version DEFAULT v1, serialNumber INTEGER,
//!     signature AlgorithmIdentifier, issuer Name, validity SEQUENCE { notBefore, notAfter },
//!     subject Name, subjectPublicKeyInfo SEQUENCE { algorithm, subjectPublicKey BIT STRING },
//!     ... }
//! ```
//!
//! A CRL (`CertificateList`) has the same signed envelope. Nothing here trusts a length;
//! malformed input gives `None`.

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
/// `[0]` constructed, context-specific: the explicit version.
const TAG_VERSION: u8 = 0xA0;

/// A signed DER structure: a certificate or a CRL.
#[derive(Debug, Clone, Copy)]
pub(super) struct Signed<'a> {
    /// The signed bytes: the whole TBS TLV.
    pub tbs: Tlv<'a>,
    /// The signature algorithm, as the content of its AlgorithmIdentifier SEQUENCE (the
    /// form rustls' `SignatureVerificationAlgorithm::signature_alg_id` has).
    pub algorithm: &'a [u8],
    /// The signature bits.
    pub signature: &'a [u8],
}

/// Splits a signed structure into its three parts.
pub(super) fn signed(der: &[u8]) -> Option<Signed<'_>> {
    let (outer, rest) = read_tlv(der)?;
    if outer.tag != TAG_SEQUENCE || !rest.is_empty() {
        return None;
    }
    let (tbs, rest) = read_tlv(outer.content)?;
    let (algorithm, rest) = read_tlv(rest)?;
    let (signature, rest) = read_tlv(rest)?;
    if tbs.tag != TAG_SEQUENCE || algorithm.tag != TAG_SEQUENCE || !rest.is_empty() {
        return None;
    }
    Some(Signed {
        tbs,
        algorithm: algorithm.content,
        signature: bit_string(signature)?,
    })
}

/// The fields of a certificate that the v1 path needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Certificate<'a> {
    pub signed: Signed<'a>,
    /// 0 for v1, 1 for v2, 2 for v3.
    pub version: u8,
    /// The serial number's INTEGER content bytes, as CRLs list them.
    pub serial: &'a [u8],
    /// The issuer Name's content.
    pub issuer: &'a [u8],
    /// Validity, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The subject Name's content.
    pub subject: &'a [u8],
    /// The whole SubjectPublicKeyInfo TLV.
    pub spki: &'a [u8],
    /// The key's AlgorithmIdentifier content.
    pub key_algorithm: &'a [u8],
    /// The subjectPublicKey bits.
    pub public_key: &'a [u8],
}

/// Parses a certificate of any version (extensions are not read).
pub(super) fn certificate(der: &[u8]) -> Option<Certificate<'_>> {
    let signed = signed(der)?;
    let mut rest = signed.tbs.content;
    let mut next = || -> Option<Tlv<'_>> {
        let (tlv, after) = read_tlv(rest)?;
        rest = after;
        Some(tlv)
    };
    let mut field = next()?;
    let version = if field.tag == TAG_VERSION {
        let (integer, after) = read_tlv(field.content)?;
        match (integer.tag, integer.content, after.is_empty()) {
            (TAG_INTEGER, [v @ 0..=2], true) => {
                field = next()?;
                *v
            }
            _ => return None,
        }
    } else {
        0
    };
    if field.tag != TAG_INTEGER || field.content.is_empty() {
        return None;
    }
    let serial = field.content;
    let inner_algorithm = next()?;
    let issuer = next()?;
    let validity = next()?;
    let subject = next()?;
    let spki = next()?;
    if inner_algorithm.tag != TAG_SEQUENCE
        || inner_algorithm.content != signed.algorithm
        || issuer.tag != TAG_SEQUENCE
        || validity.tag != TAG_SEQUENCE
        || subject.tag != TAG_SEQUENCE
        || spki.tag != TAG_SEQUENCE
    {
        return None;
    }
    let (not_before, after) = read_tlv(validity.content)?;
    let (not_after, after) = read_tlv(after)?;
    if !after.is_empty() {
        return None;
    }
    let (key_algorithm, after) = read_tlv(spki.content)?;
    let (public_key, after) = read_tlv(after)?;
    if key_algorithm.tag != TAG_SEQUENCE || !after.is_empty() {
        return None;
    }
    Some(Certificate {
        signed,
        version,
        serial,
        issuer: issuer.content,
        not_before: time(not_before)?,
        not_after: time(not_after)?,
        subject: subject.content,
        spki: spki.whole,
        key_algorithm: key_algorithm.content,
        public_key: bit_string(public_key)?,
    })
}

/// A BIT STRING's bits; only whole bytes (no unused bits), as keys and signatures are.
fn bit_string(tlv: Tlv<'_>) -> Option<&[u8]> {
    match (tlv.tag, tlv.content) {
        (TAG_BIT_STRING, [0, bits @ ..]) => Some(bits),
        _ => None,
    }
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), as
/// RFC 5280 §4.1.2.5 allows them, in seconds since the Unix epoch.
fn time(tlv: Tlv<'_>) -> Option<i64> {
    let text = std::str::from_utf8(tlv.content).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tlv.tag, digits.len()) {
        (TAG_UTC_TIME, 12) => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (TAG_GENERALIZED_TIME, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let part = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) = (part(0)?, part(2)?, part(4)?, part(6)?, part(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A DER tag-length-value.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    /// Tag, length and content.
    pub whole: &'a [u8],
}

/// Reads one TLV from the front of `input`; returns it and the rest.
pub(super) fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, after_tag) = input.split_first()?;
    // High tag numbers (0x1F) never occur in a Name.
    if tag & 0x1F == 0x1F {
        return None;
    }
    let (&first, after_first) = after_tag.split_first()?;
    let (length, after_length) = if first < 0x80 {
        (usize::from(first), after_first)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = after_first.split_at_checked(count)?;
        let length = bytes
            .iter()
            .fold(0usize, |length, &byte| (length << 8) | usize::from(byte));
        (length, rest)
    };
    let (content, rest) = after_length.split_at_checked(length)?;
    let header = input.len() - after_length.len();
    let whole = input.get(..header + length)?;
    Some((
        Tlv {
            tag,
            content,
            whole,
        },
        rest,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag, u8::try_from(content.len()).unwrap()];
        out.extend_from_slice(content);
        out
    }

    fn parse_time(tag: u8, text: &str) -> Option<i64> {
        let bytes = tlv(tag, text.as_bytes());
        time(read_tlv(&bytes)?.0)
    }

    #[test]
    fn times_read_both_forms() {
        assert_eq!(parse_time(TAG_UTC_TIME, "700101000000Z"), Some(0));
        assert_eq!(
            parse_time(TAG_UTC_TIME, "491231235959Z"),
            Some(2_524_607_999)
        );
        assert_eq!(
            parse_time(TAG_GENERALIZED_TIME, "20240229120000Z"),
            Some(1_709_208_000)
        );
        assert_eq!(parse_time(TAG_UTC_TIME, "20240229120000Z"), None);
        assert_eq!(parse_time(TAG_UTC_TIME, "701301000000Z"), None);
        assert_eq!(parse_time(TAG_UTC_TIME, "7001010000+0"), None);
    }

    #[test]
    fn certificates_from_rcgen_parse_as_v3_and_garbage_does_not() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["x".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let parsed = certificate(cert.der()).expect("parses");
        assert_eq!(parsed.version, 2);
        assert_eq!(parsed.issuer, parsed.subject);
        assert!(parsed.not_before < parsed.not_after);
        let der = cert.der().to_vec();
        for cut in [1, 10, der.len() / 2, der.len() - 1] {
            assert!(certificate(&der[..cut]).is_none());
        }
        assert!(certificate(&[]).is_none());
    }
}

//! The identity in a verified client certificate: the subject's common name, or the whole
//! subject as an RFC 4514 string. [`x509`] finds the subject's DER (in v1 certificates too,
//! which rustls-webpki does not parse); this module reads the few DER forms an X.501 Name
//! is made of:
//!
//! ```text
//! Name ::= SEQUENCE OF RelativeDistinguishedName
//! RelativeDistinguishedName ::= SET OF AttributeTypeAndValue
//! AttributeTypeAndValue ::= SEQUENCE { type OBJECT IDENTIFIER, value ANY }
//! ```
//!
//! The certificate has been verified against the listener's `client_ca` before this runs,
//! but nothing here trusts lengths: every read is bounds-checked and a malformed name gives
//! `None`.

use rustls::pki_types::CertificateDer;

use super::x509::{self, Tlv, read_tlv};

const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_OID: u8 = 0x06;

/// id-at-commonName, 2.5.4.3, as DER content bytes.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The RFC 4514 names of the attribute types (and OpenSSL's, for the last three), so a
/// subject reads as Mosquitto's `use_subject_as_username` shows it. Others are written as
/// dotted OIDs with a hex value, as RFC 4514 §2.4 requires.
const SHORT_NAMES: &[(&[u8], &str)] = &[
    (OID_COMMON_NAME, "CN"),
    (&[0x55, 0x04, 0x06], "C"),
    (&[0x55, 0x04, 0x07], "L"),
    (&[0x55, 0x04, 0x08], "ST"),
    (&[0x55, 0x04, 0x09], "STREET"),
    (&[0x55, 0x04, 0x0A], "O"),
    (&[0x55, 0x04, 0x0B], "OU"),
    // 0.9.2342.19200300.100.1.25
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x19],
        "DC",
    ),
    // 0.9.2342.19200300.100.1.1
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x01],
        "UID",
    ),
    (&[0x55, 0x04, 0x05], "serialNumber"),
    (&[0x55, 0x04, 0x0C], "title"),
    // 1.2.840.113549.1.9.1
    (
        &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01],
        "emailAddress",
    ),
];

/// The first common name in the certificate's subject, if it has one that is a string.
pub fn common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let names = relative_names(x509::certificate(certificate)?.subject)?;
    names
        .iter()
        .flatten()
        .find(|attribute| attribute.oid == OID_COMMON_NAME)
        .and_then(|attribute| decode_string(attribute.value))
}

/// The certificate's subject as an RFC 4514 string: the last relative name first, joined
/// by `,`, multi-valued ones by `+`, special characters escaped (`CN=dev1,O=Acme,C=DE`).
/// `None` when the subject is empty or malformed.
pub fn subject_string(certificate: &CertificateDer<'_>) -> Option<String> {
    let names = relative_names(x509::certificate(certificate)?.subject)?;
    if names.is_empty() {
        return None;
    }
    let formatted: Vec<String> = names
        .iter()
        .rev()
        .map(|rdn| {
            rdn.iter()
                .map(Attribute::rfc4514)
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    Some(formatted.join(","))
}

/// One AttributeTypeAndValue.
#[derive(Debug)]
struct Attribute<'a> {
    /// The type's OID, as DER content bytes.
    oid: &'a [u8],
    /// The value, as a whole TLV.
    value: Tlv<'a>,
}

impl Attribute<'_> {
    fn rfc4514(&self) -> String {
        let short_name = SHORT_NAMES
            .iter()
            .find(|(oid, _)| *oid == self.oid)
            .map(|(_, name)| *name);
        match (short_name, decode_string(self.value)) {
            (Some(name), Some(value)) => format!("{name}={}", escape(&value)),
            // RFC 4514 §2.4: a type without a short name, or a value that is not a
            // string, is written as `#` and the hex of its BER (here DER) encoding.
            (name, _) => format!(
                "{}=#{}",
                name.map_or_else(|| dotted_oid(self.oid), str::to_owned),
                hex(self.value.whole)
            ),
        }
    }
}

/// Reads consecutive TLVs that fill `input` exactly.
fn read_all(mut input: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut items = Vec::new();
    while !input.is_empty() {
        let (tlv, rest) = read_tlv(input)?;
        items.push(tlv);
        input = rest;
    }
    Some(items)
}

/// The relative names of a Name, given the content of its outer SEQUENCE.
fn relative_names(name: &[u8]) -> Option<Vec<Vec<Attribute<'_>>>> {
    read_all(name)?
        .into_iter()
        .map(|set| {
            if set.tag != TAG_SET {
                return None;
            }
            read_all(set.content)?
                .into_iter()
                .map(|sequence| {
                    if sequence.tag != TAG_SEQUENCE {
                        return None;
                    }
                    let (oid, rest) = read_tlv(sequence.content)?;
                    let (value, rest) = read_tlv(rest)?;
                    (oid.tag == TAG_OID && rest.is_empty()).then_some(Attribute {
                        oid: oid.content,
                        value,
                    })
                })
                .collect()
        })
        .collect()
}

/// The text of a directory string value, or `None` if it is not a string type this knows.
fn decode_string(value: Tlv<'_>) -> Option<String> {
    let bytes = value.content;
    match value.tag {
        // UTF8String
        0x0C => String::from_utf8(bytes.to_vec()).ok(),
        // NumericString, PrintableString, IA5String, VisibleString: ASCII subsets.
        0x12 | 0x13 | 0x16 | 0x1A => bytes
            .is_ascii()
            .then(|| String::from_utf8_lossy(bytes).into_owned()),
        // TeletexString: in practice Latin-1.
        0x14 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16 big-endian.
        0x1E => {
            if !bytes.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        // UniversalString: UTF-32 big-endian.
        0x1C => {
            if !bytes.len().is_multiple_of(4) {
                return None;
            }
            bytes
                .chunks_exact(4)
                .map(|quad| {
                    char::from_u32(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]]))
                })
                .collect()
        }
        _ => None,
    }
}

/// RFC 4514 §2.4 escaping of an attribute value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            _ => out.push(c),
        }
    }
    out
}

/// An OID's content bytes in dotted-decimal form.
fn dotted_oid(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for &byte in oid {
        value = (value << 7) | u64::from(byte & 0x7F);
        if byte & 0x80 == 0 {
            if arcs.is_empty() {
                // The first subidentifier packs the first two arcs: 40 * X + Y.
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};

    use super::*;

    fn certificate(subject: DistinguishedName) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["client.test".to_owned()]).unwrap();
        params.distinguished_name = subject;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn common_name_is_read_from_the_subject() {
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CountryName, "DE");
        subject.push(DnType::OrganizationName, "Acme");
        subject.push(DnType::CommonName, "sensor-7");
        let cert = certificate(subject);
        assert_eq!(common_name(&cert).as_deref(), Some("sensor-7"));
    }

    #[test]
    fn subject_without_common_name_has_none() {
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, "Acme");
        let cert = certificate(subject);
        assert_eq!(common_name(&cert), None);
        assert_eq!(subject_string(&cert).as_deref(), Some("O=Acme"));
    }

    #[test]
    fn subject_reads_last_name_first_with_escapes() {
        let mut subject = DistinguishedName::new();
        subject.push(
            DnType::CountryName,
            DnValue::PrintableString("DE".try_into().unwrap()),
        );
        subject.push(DnType::OrganizationName, "Acme, Inc.");
        subject.push(DnType::OrganizationalUnitName, " lab+test ");
        subject.push(
            DnType::CommonName,
            DnValue::BmpString("gerät".try_into().unwrap()),
        );
        let cert = certificate(subject);
        assert_eq!(
            subject_string(&cert).as_deref(),
            Some("CN=gerät,OU=\\ lab\\+test\\ ,O=Acme\\, Inc.,C=DE")
        );
    }

    #[test]
    fn unknown_attribute_type_is_written_as_dotted_oid_and_hex() {
        let mut subject = DistinguishedName::new();
        // 1.3.6.1.4.1.99999.1, a private OID with a UTF8String value "x".
        subject.push(DnType::CustomDnType(vec![1, 3, 6, 1, 4, 1, 99999, 1]), "x");
        subject.push(DnType::CommonName, "#1");
        let cert = certificate(subject);
        assert_eq!(
            subject_string(&cert).as_deref(),
            Some("CN=\\#1,1.3.6.1.4.1.99999.1=#0c0178")
        );
    }

    #[test]
    fn malformed_names_give_none_without_panicking() {
        // A SET whose length runs past the end.
        assert!(relative_names(&[TAG_SET, 0x05, TAG_SEQUENCE]).is_none());
        // A long-form length with more length bytes than there are.
        assert!(relative_names(&[TAG_SET, 0x84, 0xFF]).is_none());
        // A SEQUENCE instead of a SET at the top.
        assert!(relative_names(&[TAG_SEQUENCE, 0x00]).is_none());
        // An attribute with a type but no value.
        assert!(
            relative_names(&[TAG_SET, 0x05, TAG_SEQUENCE, 0x03, TAG_OID, 0x01, 0x55]).is_none()
        );
        // Every truncation of a good name is refused or parsed, never a panic.
        let good = [
            TAG_SET,
            0x0B,
            TAG_SEQUENCE,
            0x09,
            TAG_OID,
            0x03,
            0x55,
            0x04,
            0x03,
            0x0C,
            0x02,
            b'h',
            b'i',
        ];
        for end in 0..good.len() {
            let _ = relative_names(&good[..end]);
        }
        let names = relative_names(&good).unwrap();
        assert_eq!(decode_string(names[0][0].value).as_deref(), Some("hi"));
    }
}

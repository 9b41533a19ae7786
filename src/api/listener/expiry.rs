//! The expiry (`notAfter`) of a certificate, for the expiry metric: RFC 5280 §4.1 outlined
//! with `der`'s derive, every field but the validity left undecoded.

use der::Decode;
use der::asn1::{AnyRef, BitStringRef, GeneralizedTime, UtcTime};

#[derive(der::Sequence)]
struct Certificate<'a> {
    tbs_certificate: TbsCertificate<'a>,
    signature_algorithm: AnyRef<'a>,
    signature: BitStringRef<'a>,
}

#[derive(der::Sequence)]
struct TbsCertificate<'a> {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    version: Option<AnyRef<'a>>,
    serial_number: AnyRef<'a>,
    signature: AnyRef<'a>,
    issuer: AnyRef<'a>,
    validity: Validity,
    subject: AnyRef<'a>,
    subject_public_key_info: AnyRef<'a>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    issuer_unique_id: Option<BitStringRef<'a>>,
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
    subject_unique_id: Option<BitStringRef<'a>>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    extensions: Option<AnyRef<'a>>,
}

#[derive(der::Sequence)]
struct Validity {
    not_before: Time,
    not_after: Time,
}

#[derive(der::Choice)]
enum Time {
    #[asn1(type = "UTCTime")]
    Utc(UtcTime),
    #[asn1(type = "GeneralizedTime")]
    General(GeneralizedTime),
}

/// The certificate's `notAfter` in Unix seconds, or None if `der` is not a certificate.
pub(super) fn not_after(der: &[u8]) -> Option<u64> {
    let certificate = Certificate::from_der(der).ok()?;
    let not_after = match certificate.tbs_certificate.validity.not_after {
        Time::Utc(time) => time.to_unix_duration(),
        Time::General(time) => time.to_unix_duration(),
    };
    Some(not_after.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_until(year: i32, month: u8, day: u8) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.internal".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, month, day);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_utc_and_generalized_not_after() {
        // 2030-01-01T00:00:00Z (UTCTime) and 2051-06-01T00:00:00Z (GeneralizedTime, past 2049).
        assert_eq!(
            not_after(&certificate_until(2030, 1, 1)),
            Some(1_893_456_000)
        );
        assert_eq!(
            not_after(&certificate_until(2051, 6, 1)),
            Some(2_569_190_400)
        );
    }

    #[test]
    fn anything_else_is_none() {
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x03, 0x02, 0x01, 0x00]), None);
        let mut truncated = certificate_until(2030, 1, 1);
        truncated.truncate(truncated.len() / 2);
        assert_eq!(not_after(&truncated), None);
    }
}

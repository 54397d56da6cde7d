//! Self-managed certificates: what the one Secret holds, and the pure decision of what to change
//! in it next.
//!
//! The Secret holds a trust bundle (`ca.crt`: every CA clients must trust, oldest first, the
//! signing CA last), the signing CA's key (`ca.key`) and the serving certificate (`tls.crt`,
//! `tls.key`). A rotation never leaves a client without trust in what is served:
//!
//! 1. a CA with a third of its life left is joined by a new one (the bundle holds both, the
//!    served certificate does not change);
//! 2. the serving certificate moves to the new CA only once the bundle with it has been
//!    published (in the webhook configuration's `caBundle`) for the publish delay;
//! 3. the old CA leaves the bundle when it expires, and every certificate it signed with it.
//!
//! A serving certificate with a third of its life left, or for other names, is re-issued by the
//! same CA, which clients already trust.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;

use crate::CertError;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// Certificates are valid from this long before they are made, so that a peer whose clock is a
/// little behind accepts them at once. When a certificate was made is read back the same way.
pub const BACKDATE_SECONDS: i64 = 300;

/// How long certificates live, and how long a new CA is published before it signs what is
/// served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub ca: Duration,
    pub serving: Duration,
    pub publish_delay: Duration,
}

/// One certificate, as the lifecycle needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub pem: String,
    pub der: Vec<u8>,
    pub subject: String,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// DNS names (lower case) and IP addresses it is valid for.
    pub names: BTreeSet<String>,
}

impl CertInfo {
    /// When it was made (`not_before` is backdated).
    pub fn issued_at(&self) -> i64 {
        self.not_before.saturating_add(BACKDATE_SECONDS)
    }

    /// True once less than a third of its life is left.
    fn needs_renewal(&self, now: i64) -> bool {
        let life = self.not_after.saturating_sub(self.issued_at()).max(0);
        self.not_after.saturating_sub(now) < life / 3
    }

    fn expired(&self, now: i64) -> bool {
        now >= self.not_after
    }
}

/// Parses every PEM certificate in `pem`; `key` names where it came from in errors.
pub fn parse_certificates(pem: &[u8], key: &str) -> Result<Vec<CertInfo>, CertError> {
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Invalid {
            key: key.to_string(),
            message: e.to_string(),
        })?;
    if ders.is_empty() {
        return Err(CertError::Invalid {
            key: key.to_string(),
            message: "no PEM certificate".to_string(),
        });
    }
    ders.iter().map(|der| cert_info(der, key)).collect()
}

fn cert_info(der: &CertificateDer<'_>, key: &str) -> Result<CertInfo, CertError> {
    let invalid = |message: String| CertError::Invalid {
        key: key.to_string(),
        message,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| invalid(e.to_string()))?;
    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    names.insert(dns.to_ascii_lowercase());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        IpAddr::from(v4)
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        IpAddr::from(v6)
                    } else {
                        continue;
                    };
                    names.insert(ip.to_string());
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        pem: pem_encode(der),
        der: der.to_vec(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        names,
    })
}

fn pem_encode(der: &[u8]) -> String {
    let block = pem::Pem::new("CERTIFICATE", der.to_vec());
    pem::encode_config(
        &block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The names a certificate for `names` is valid for, in the form [`CertInfo::names`] has.
pub fn canonical_names(names: &[String]) -> BTreeSet<String> {
    names
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => name.to_ascii_lowercase(),
        })
        .collect()
}

/// What the Secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// CAs still trusted besides the signing one, oldest first.
    pub previous: Vec<CertInfo>,
    /// The CA that signs new serving certificates; its key is `signing_key_pem`.
    pub signing: CertInfo,
    pub signing_key_pem: String,
    pub serving: CertInfo,
    pub serving_key_pem: String,
}

impl Stored {
    /// Reads the Secret's data; `get` returns a key's bytes. An error names the key at fault.
    pub fn parse<'a>(get: impl Fn(&str) -> Option<&'a [u8]>) -> Result<Self, CertError> {
        let required = |key: &str| {
            get(key).ok_or_else(|| CertError::Invalid {
                key: key.to_string(),
                message: "missing".to_string(),
            })
        };
        let text = |key: &str| {
            String::from_utf8(required(key)?.to_vec()).map_err(|_| CertError::Invalid {
                key: key.to_string(),
                message: "not UTF-8 PEM".to_string(),
            })
        };
        let mut trust = parse_certificates(required(CA_CERT)?, CA_CERT)?;
        let signing = trust.pop().ok_or_else(|| CertError::Invalid {
            key: CA_CERT.to_string(),
            message: "no PEM certificate".to_string(),
        })?;
        let signing_key_pem = text(CA_KEY)?;
        KeyPair::from_pem(&signing_key_pem).map_err(|e| CertError::Invalid {
            key: CA_KEY.to_string(),
            message: e.to_string(),
        })?;
        let serving_pem = required(TLS_CERT)?;
        let serving = parse_certificates(serving_pem, TLS_CERT)?
            .into_iter()
            .next()
            .ok_or_else(|| CertError::Invalid {
                key: TLS_CERT.to_string(),
                message: "no PEM certificate".to_string(),
            })?;
        let serving_key_pem = text(TLS_KEY)?;
        let stored = Self {
            previous: trust,
            signing,
            signing_key_pem,
            serving,
            serving_key_pem,
        };
        // The served pair must be usable as it is.
        stored.certified_key()?;
        Ok(stored)
    }

    /// The Secret's data.
    pub fn to_data(&self) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            (CA_CERT.to_string(), self.ca_bundle_pem().into_bytes()),
            (
                CA_KEY.to_string(),
                self.signing_key_pem.clone().into_bytes(),
            ),
            (TLS_CERT.to_string(), self.serving.pem.clone().into_bytes()),
            (
                TLS_KEY.to_string(),
                self.serving_key_pem.clone().into_bytes(),
            ),
        ])
    }

    /// Every CA clients must trust, oldest first: the webhook configuration's `caBundle` and
    /// the scheduler's `caData`.
    pub fn ca_bundle_pem(&self) -> String {
        self.trusted().map(|ca| ca.pem.as_str()).collect()
    }

    pub fn trusted(&self) -> impl Iterator<Item = &CertInfo> {
        self.previous.iter().chain(std::iter::once(&self.signing))
    }

    /// What rustls serves.
    pub fn certified_key(&self) -> Result<CertifiedKey, CertError> {
        crate::certified_key(
            self.serving.pem.as_bytes(),
            self.serving_key_pem.as_bytes(),
            std::path::Path::new(TLS_CERT),
        )
    }
}

/// The next change to the Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do.
    Keep,
    /// Nothing usable is stored (none at all, or the signing CA has expired): a new CA and a
    /// serving certificate it signs.
    Create,
    /// Drop expired CAs from the bundle.
    Prune,
    /// The signing CA has a third of its life left: a new CA joins the bundle and signs from now
    /// on, once published.
    StageCa,
    /// A serving certificate from the signing CA: the served one is due, for other names, or
    /// from an older CA whose successor is now published.
    IssueServing,
}

/// The next step for the Secret. `signing_published` says whether every client that must
/// trust the signing CA has been given it (the webhook configuration's `caBundle` holds it);
/// the serving certificate moves to a new CA only when it has, and the publish delay has
/// passed since the CA was made.
pub fn next_step(
    stored: Option<&Stored>,
    names: &BTreeSet<String>,
    now: i64,
    signing_published: bool,
    lifetimes: &Lifetimes,
) -> Step {
    let Some(stored) = stored else {
        return Step::Create;
    };
    if stored.signing.expired(now) {
        return Step::Create;
    }
    if stored.previous.iter().any(|ca| ca.expired(now)) {
        return Step::Prune;
    }
    if stored.signing.needs_renewal(now) {
        return Step::StageCa;
    }
    let serving = &stored.serving;
    let due = serving.issuer != stored.signing.subject
        || &serving.names != names
        || serving.needs_renewal(now);
    let publish_delay = i64::try_from(lifetimes.publish_delay.as_secs()).unwrap_or(i64::MAX);
    let signing_ready =
        signing_published && now >= stored.signing.issued_at().saturating_add(publish_delay);
    if due && signing_ready {
        Step::IssueServing
    } else {
        Step::Keep
    }
}

/// Performs `step` on `stored`: the Secret's next content, or `None` for [`Step::Keep`].
pub fn perform(
    step: Step,
    stored: Option<&Stored>,
    names: &[String],
    now: i64,
    lifetimes: &Lifetimes,
) -> Result<Option<Stored>, CertError> {
    let next = match (step, stored) {
        (Step::Keep, _) => return Ok(None),
        (Step::Create, _) | (_, None) => {
            let (signing, signing_key_pem) = new_ca(now, lifetimes.ca)?;
            let (serving, serving_key_pem) =
                new_serving(&signing, &signing_key_pem, names, now, lifetimes.serving)?;
            Stored {
                previous: Vec::new(),
                signing,
                signing_key_pem,
                serving,
                serving_key_pem,
            }
        }
        (Step::Prune, Some(stored)) => Stored {
            previous: stored
                .previous
                .iter()
                .filter(|ca| !ca.expired(now))
                .cloned()
                .collect(),
            ..stored.clone()
        },
        (Step::StageCa, Some(stored)) => {
            let (signing, signing_key_pem) = new_ca(now, lifetimes.ca)?;
            let mut previous = stored.previous.clone();
            previous.push(stored.signing.clone());
            Stored {
                previous,
                signing,
                signing_key_pem,
                ..stored.clone()
            }
        }
        (Step::IssueServing, Some(stored)) => {
            let (serving, serving_key_pem) = new_serving(
                &stored.signing,
                &stored.signing_key_pem,
                names,
                now,
                lifetimes.serving,
            )?;
            Stored {
                serving,
                serving_key_pem,
                ..stored.clone()
            }
        }
    };
    Ok(Some(next))
}

fn validity(params: &mut CertificateParams, now: i64, not_after: i64) -> Result<(), CertError> {
    let at = |seconds: i64| {
        time::OffsetDateTime::from_unix_timestamp(seconds)
            .map_err(|_| CertError::Generate(rcgen::Error::Time))
    };
    params.not_before = at(now.saturating_sub(BACKDATE_SECONDS))?;
    params.not_after = at(not_after)?;
    Ok(())
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

fn new_ca(now: i64, life: Duration) -> Result<(CertInfo, String), CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // The time in the name tells generations apart: a serving certificate's issuer names its CA.
    params
        .distinguished_name
        .push(DnType::CommonName, format!("jellyfin-ha CA {now}"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, now, now.saturating_add(seconds(life)))?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert_info(cert.der(), CA_CERT)?, key.serialize_pem()))
}

fn new_serving(
    ca: &CertInfo,
    ca_key_pem: &str,
    names: &[String],
    now: i64,
    life: Duration,
) -> Result<(CertInfo, String), CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca.der.clone()), ca_key)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("jellyfin-ha", String::as_str),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Never past its CA: clients would reject it once the CA expired, and the CA leaves the
    // bundle then.
    validity(
        &mut params,
        now,
        now.saturating_add(seconds(life)).min(ca.not_after),
    )?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert_info(cert.der(), TLS_CERT)?, key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_800_000_000;

    fn lifetimes() -> Lifetimes {
        Lifetimes {
            ca: Duration::from_secs(300 * DAY as u64),
            serving: Duration::from_secs(30 * DAY as u64),
            publish_delay: Duration::from_secs(60),
        }
    }

    fn names() -> Vec<String> {
        vec![
            "jellyfin-ha-webhook.jellyfin-ha.svc".into(),
            "127.0.0.1".into(),
        ]
    }

    fn step(stored: Option<&Stored>, now: i64, published: bool) -> Step {
        next_step(
            stored,
            &canonical_names(&names()),
            now,
            published,
            &lifetimes(),
        )
    }

    fn apply(stored: Option<&Stored>, step: Step, now: i64) -> Stored {
        perform(step, stored, &names(), now, &lifetimes())
            .unwrap()
            .unwrap()
    }

    fn created() -> Stored {
        apply(None, Step::Create, NOW)
    }

    fn reread(stored: &Stored) -> Stored {
        let data = stored.to_data();
        Stored::parse(|key| data.get(key).map(Vec::as_slice)).unwrap()
    }

    #[test]
    fn nothing_stored_creates_a_ca_and_a_certificate_it_signed() {
        assert_eq!(step(None, NOW, false), Step::Create);
        let stored = created();
        assert!(stored.previous.is_empty());
        assert_eq!(stored.serving.issuer, stored.signing.subject);
        assert_eq!(stored.serving.names, canonical_names(&names()));
        assert_eq!(stored.serving.issued_at(), NOW);
        assert_eq!(stored.serving.not_after, NOW + 30 * DAY);
        assert_eq!(stored.signing.not_after, NOW + 300 * DAY);
        assert_eq!(step(Some(&stored), NOW + 1, true), Step::Keep);
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let stored = created();
        assert_eq!(reread(&stored), stored);
        let staged = apply(Some(&stored), Step::StageCa, NOW + 250 * DAY);
        assert_eq!(reread(&staged), staged);
        assert_eq!(
            staged.ca_bundle_pem().matches("BEGIN CERTIFICATE").count(),
            2
        );
    }

    #[test]
    fn a_broken_secret_names_the_key_at_fault() {
        let mut data = created().to_data();
        data.insert(TLS_CERT.into(), b"not a certificate".to_vec());
        let err = Stored::parse(|key| data.get(key).map(Vec::as_slice)).unwrap_err();
        assert!(err.to_string().starts_with("tls.crt:"), "{err}");
        data.remove(CA_KEY);
        let err = Stored::parse(|key| data.get(key).map(Vec::as_slice)).unwrap_err();
        assert!(err.to_string().contains("ca.key"), "{err}");
    }

    #[test]
    fn a_serving_certificate_with_a_third_of_its_life_left_is_reissued_by_the_same_ca() {
        let stored = created();
        assert_eq!(step(Some(&stored), NOW + 19 * DAY, true), Step::Keep);
        assert_eq!(
            step(Some(&stored), NOW + 21 * DAY, true),
            Step::IssueServing
        );
        let renewed = apply(Some(&stored), Step::IssueServing, NOW + 21 * DAY);
        assert_eq!(renewed.signing, stored.signing);
        assert_eq!(renewed.serving.issuer, stored.signing.subject);
        assert_ne!(renewed.serving.der, stored.serving.der);
        assert_eq!(step(Some(&renewed), NOW + 22 * DAY, true), Step::Keep);
    }

    #[test]
    fn other_names_get_a_new_serving_certificate() {
        let stored = created();
        let other = canonical_names(&["jellyfin-ha-extender.jellyfin-ha.svc".into()]);
        assert_eq!(
            next_step(Some(&stored), &other, NOW + 3600, true, &lifetimes()),
            Step::IssueServing
        );
    }

    #[test]
    fn a_new_ca_signs_only_after_it_is_published_for_the_delay() {
        let stored = created();
        let at = NOW + 201 * DAY;
        assert_eq!(step(Some(&stored), at, true), Step::StageCa);
        let staged = apply(Some(&stored), Step::StageCa, at);
        assert_eq!(staged.previous, vec![stored.signing.clone()]);
        assert_eq!(
            staged.serving, stored.serving,
            "the served certificate stays"
        );
        // Not published yet, or published too recently: keep serving the old CA's certificate.
        assert_eq!(step(Some(&staged), at + 3600, false), Step::Keep);
        assert_eq!(step(Some(&staged), at + 59, true), Step::Keep);
        assert_eq!(step(Some(&staged), at + 60, true), Step::IssueServing);
        let switched = apply(Some(&staged), Step::IssueServing, at + 60);
        assert_eq!(switched.serving.issuer, staged.signing.subject);
        assert_eq!(
            switched.previous, staged.previous,
            "the old CA stays trusted"
        );
        // The old CA leaves the bundle when it expires, with its last certificate.
        assert_eq!(step(Some(&switched), at + 61, true), Step::Keep);
        assert_eq!(step(Some(&switched), NOW + 300 * DAY, true), Step::Prune);
        let pruned = apply(Some(&switched), Step::Prune, NOW + 300 * DAY);
        assert!(pruned.previous.is_empty());
        assert_eq!(pruned.signing, switched.signing);
    }

    #[test]
    fn a_serving_certificate_never_outlives_its_ca() {
        let stored = created();
        let late = apply(Some(&stored), Step::IssueServing, NOW + 290 * DAY);
        assert_eq!(late.serving.not_after, stored.signing.not_after);
    }

    #[test]
    fn an_expired_signing_ca_starts_over() {
        assert_eq!(step(Some(&created()), NOW + 300 * DAY, true), Step::Create);
    }

    /// Runs the lifecycle over years with clients that learn the bundle only when it is
    /// published, and publishes it a little late: the served certificate is always signed by a
    /// CA that clients trusted for the whole publish delay, and is never expired.
    #[test]
    fn every_served_certificate_is_trusted_by_clients_throughout() {
        let mut stored = created();
        // (time, bundle subjects) as clients received them.
        let mut published: Vec<(i64, Vec<String>)> =
            vec![(NOW, stored.trusted().map(|ca| ca.subject.clone()).collect())];
        let mut steps = Vec::new();
        let mut now = NOW;
        while now < NOW + 2000 * DAY {
            now += 3600;
            let subjects: Vec<String> = stored.trusted().map(|ca| ca.subject.clone()).collect();
            // Publishing lags a tick behind the Secret.
            let signing_published = published
                .last()
                .is_some_and(|(_, last)| last.contains(&stored.signing.subject));
            if published.last().map(|(_, last)| last) != Some(&subjects) {
                published.push((now, subjects));
            }
            let next = step(Some(&stored), now, signing_published);
            if next != Step::Keep {
                steps.push(next);
                stored = apply(Some(&stored), next, now);
            }
            assert!(
                now < stored.serving.not_after,
                "served an expired certificate"
            );
            let trusted_since = published
                .iter()
                .rev()
                .take_while(|(_, bundle)| bundle.contains(&stored.serving.issuer))
                .last()
                .map(|(at, _)| *at);
            assert!(
                trusted_since.is_some_and(|at| at == NOW || now - at >= 60),
                "at {now}: served a certificate from {} that clients have not trusted for the delay",
                stored.serving.issuer
            );
        }
        assert!(steps.contains(&Step::StageCa), "{steps:?}");
        assert!(steps.contains(&Step::Prune), "{steps:?}");
        assert!(!steps.contains(&Step::Create), "{steps:?}");
    }
}

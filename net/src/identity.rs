//! A node's identity on the network: an Ed25519 key pair kept in the data directory (mode 0600),
//! and the self-signed TLS certificate that carries its public key. Both ends of a connection
//! present one and check the other's: the peer id is the certificate's Ed25519 key, proven by
//! the TLS handshake signature.

use std::path::Path;
use std::sync::Arc;

use hyperfs_engine::crypto::{Hash, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::NetError;

hyperfs_engine::bytes32!(
    /// A node's identity on the network: its Ed25519 public key, which its TLS certificate
    /// carries and its handshake signature proves.
    PeerId
);

/// The TLS application protocol of hyperfs replication.
pub const ALPN: &[u8] = b"hyperfs/1";

/// A node's key pair.
pub struct Identity {
    key_pair: KeyPair,
    /// A common name of raw UTF-16BE bytes for the certificate (see [`Identity::with_name_bytes`]).
    name_bytes: Option<Vec<u8>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", hex_short(&self.peer_id().0))
    }
}

fn hex_short(id: &Hash) -> String {
    id.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

impl Identity {
    /// Reads the identity in `path` (32 secret seed bytes), or creates one there.
    pub fn load_or_create(path: &Path) -> Result<Identity, NetError> {
        let seed = hyperfs_engine::crypto::secret_seed_file(path).map_err(|e| NetError::Identity(e.to_string()))?;
        Ok(Identity::from_seed(&seed))
    }

    pub fn from_seed(seed: &[u8; 32]) -> Identity {
        Identity { key_pair: KeyPair::from_seed(seed), name_bytes: None }
    }

    /// This identity with a certificate whose subject holds a common name of these raw UTF-16BE
    /// bytes (a BMPString, ahead of the public key in the DER): what a peer that smuggles another
    /// node's key into its certificate presents. For the tests that play one.
    #[doc(hidden)]
    pub fn with_name_bytes(mut self, utf16be: Vec<u8>) -> Identity {
        self.name_bytes = Some(utf16be);
        self
    }

    /// The key pair itself: what signs this node's HyperDHT records.
    pub fn key_pair(&self) -> KeyPair {
        self.key_pair.clone()
    }

    /// The same key as the JS wire's Noise static key (`noise-curve-ed`).
    pub fn noise_key_pair(&self) -> crate::noise::KeyPair {
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&self.key_pair.secret_key()[..32]);
        crate::noise::KeyPair::from_seed(&seed)
    }

    /// The public key other nodes know this one by.
    pub fn peer_id(&self) -> PeerId {
        PeerId(self.key_pair.public_key())
    }

    /// The certificate and key rustls presents for this identity.
    pub(crate) fn certificate(&self) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), NetError> {
        // PKCS#8 v1 of an Ed25519 seed (RFC 8410): a fixed prefix, then the 32 bytes.
        let mut pkcs8 =
            vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        pkcs8.extend_from_slice(&self.key_pair.secret_key()[..32]);
        let der = PrivatePkcs8KeyDer::from(pkcs8);
        let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
            .map_err(|e| NetError::Identity(format!("the identity key: {e}")))?;
        let mut params = rcgen::CertificateParams::new(vec!["hyperfs".to_owned()])
            .map_err(|e| NetError::Identity(format!("certificate parameters: {e}")))?;
        if let Some(bytes) = &self.name_bytes {
            let name = rcgen::BmpString::from_utf16be(bytes.clone())
                .map_err(|e| NetError::Identity(format!("certificate name: {e}")))?;
            params.distinguished_name.push(rcgen::DnType::CommonName, rcgen::DnValue::BmpString(name));
        }
        let cert = params.self_signed(&kp).map_err(|e| NetError::Identity(format!("self-signing: {e}")))?;
        Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(der)))
    }
}

/// The Ed25519 public key of a certificate's subject (its SubjectPublicKeyInfo), if it has one:
/// the key the handshake signature is checked against, read from where X.509 puts it. (The
/// bytes of an Ed25519 SPKI found anywhere in the certificate, as this once did, could sit in a
/// serial number or a name before the real one: a peer could claim another node's id.)
pub fn peer_id_of(cert: &[u8]) -> Option<PeerId> {
    // SPKI of an Ed25519 key: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (33 bytes) }.
    const SPKI: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    let (tag, cert_body, _) = der(cert)?;
    let (tbs_tag, mut tbs, _) = der(cert_body)?;
    if tag != 0x30 || tbs_tag != 0x30 {
        return None;
    }
    // TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
    // validity, subject, subjectPublicKeyInfo, ... }
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs)?.2;
    }
    for _ in 0..5 {
        tbs = der(tbs)?.2;
    }
    let whole = tbs.get(..tbs.len() - der(tbs)?.2.len())?;
    if whole.len() != SPKI.len() + 32 || whole[..SPKI.len()] != SPKI {
        return None;
    }
    whole[SPKI.len()..].try_into().ok().map(PeerId)
}

/// One DER element at the start of `buf`: (tag, contents, what follows). Definite lengths of
/// at most four bytes only; anything else is `None`.
fn der(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *buf.first()?;
    let first = *buf.get(1)?;
    let (len, at) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let len = buf.get(2..2 + n)?.iter().fold(0usize, |l, &b| l << 8 | b as usize);
        (len, 2 + n)
    };
    let end = at.checked_add(len)?;
    Some((tag, buf.get(at..end)?, buf.get(end..)?))
}

/// Accepts any certificate that carries an Ed25519 key and proves it in the handshake: who the
/// peer is, is decided by its key, not by a certificate authority.
#[derive(Debug)]
pub(crate) struct PeerVerifier {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PeerVerifier {
    pub(crate) fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> Arc<PeerVerifier> {
        Arc::new(PeerVerifier { provider })
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        peer_id_of(cert)
            .map(|_| ())
            .ok_or_else(|| rustls::Error::General("the peer's certificate carries no Ed25519 identity".into()))
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::General("only Ed25519 identities are accepted".into()));
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
}

/// The handshake checks both verifier traits share: TLS 1.3 with an Ed25519 signature only.
macro_rules! handshake_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("TLS 1.2 is not spoken".into()))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.tls13(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    };
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    handshake_checks!();
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    handshake_checks!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_carries_the_identity() {
        let id = Identity::from_seed(&[5; 32]);
        let (cert, _) = id.certificate().expect("certificate");
        assert_eq!(peer_id_of(&cert), Some(id.peer_id()));
        assert_eq!(peer_id_of(b"not a certificate"), None);
    }

    /// DER of `tag` around `body`.
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if body.len() < 0x80 {
            out.push(body.len() as u8);
        } else {
            out.extend([0x82, (body.len() >> 8) as u8, body.len() as u8]);
        }
        out.extend_from_slice(body);
        out
    }

    /// A certificate whose serial number holds another node's key in the form of an Ed25519
    /// SPKI, ahead of its own: the id is the subject's key, never the bytes that look like one.
    #[test]
    fn a_certificate_cannot_claim_an_id_it_holds_elsewhere() {
        let (victim, attacker) = (Identity::from_seed(&[1; 32]), Identity::from_seed(&[2; 32]));
        let spki = |id: &Identity| {
            let mut s = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
            s.extend_from_slice(&id.peer_id().0);
            s
        };
        let alg = tlv(0x30, &[0x06, 0x03, 0x2b, 0x65, 0x70]);
        let mut serial = vec![0x00];
        serial.extend(spki(&victim));
        let tbs = [
            tlv(0xa0, &tlv(0x02, &[2])),
            tlv(0x02, &serial),
            alg.clone(),
            tlv(0x30, &[]),
            tlv(0x30, &[]),
            tlv(0x30, &[]),
            spki(&attacker),
        ]
        .concat();
        let cert = tlv(0x30, &[tlv(0x30, &tbs), alg, tlv(0x03, &[0; 65])].concat());
        assert_eq!(peer_id_of(&cert), Some(attacker.peer_id()));
        // A real certificate, cut anywhere, gives no id rather than a wrong one.
        let (real, _) = victim.certificate().expect("certificate");
        for cut in 0..real.len() {
            assert_ne!(peer_id_of(&real[..cut]), Some(attacker.peer_id()));
        }
    }

    #[test]
    fn an_identity_is_kept_private_and_reloaded() {
        let tmp = std::env::temp_dir().join(format!("hyperfs-identity-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let a = Identity::load_or_create(&tmp).expect("create");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&tmp).expect("meta").permissions());
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Identity::load_or_create(&tmp).expect("reload").peer_id(), a.peer_id());
        std::fs::write(&tmp, b"short").expect("damage");
        assert!(Identity::load_or_create(&tmp).is_err());
        let _ = std::fs::remove_file(&tmp);
    }
}

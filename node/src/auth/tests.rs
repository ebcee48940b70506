use super::*;

const NOW: u64 = 1_800_000_000;
const DAY: u64 = 86_400;

fn peer() -> (identity::Keypair, PeerId) {
    let k = identity::Keypair::generate_ed25519();
    let p = k.public().to_peer_id();
    (k, p)
}

#[test]
fn a_direct_credential_verifies_for_its_peer_only_and_only_in_time() {
    let auth = Authority::generate("lab").unwrap();
    let (_, p) = peer();
    let (_, other) = peer();
    let cred = auth.credential_for(&p, Role::Node, NOW, NOW + DAY).unwrap();
    let trust = auth.trust();
    let m = trust.verify(&cred, &p, NOW + 10).unwrap();
    assert_eq!(m.role, Role::Node);
    assert_eq!(m.not_after, NOW + DAY);
    assert_eq!(trust.verify(&cred, &other, NOW), Err(AuthError::WrongPeer));
    assert!(matches!(
        trust.verify(&cred, &p, NOW + DAY + 1),
        Err(AuthError::Expired { .. })
    ));
    assert!(matches!(
        trust.verify(&cred, &p, NOW - 1),
        Err(AuthError::NotYetValid { .. })
    ));
}

#[test]
fn another_authority_or_mesh_or_a_tampered_field_is_refused() {
    let auth = Authority::generate("lab").unwrap();
    let stranger = Authority::generate("lab").unwrap();
    let (_, p) = peer();
    let cred = stranger
        .credential_for(&p, Role::Node, NOW, NOW + DAY)
        .unwrap();
    assert_eq!(
        auth.trust().verify(&cred, &p, NOW),
        Err(AuthError::WrongAuthority)
    );

    let other_mesh = Trust::new("prod", auth.public());
    let cred = auth.credential_for(&p, Role::Node, NOW, NOW + DAY).unwrap();
    assert!(matches!(
        other_mesh.verify(&cred, &p, NOW),
        Err(AuthError::WrongMesh { .. })
    ));

    // Each signed field, changed, breaks the signature.
    let trust = auth.trust();
    let client = auth
        .credential_for(&p, Role::Client, NOW, NOW + DAY)
        .unwrap();
    let mut up = client.clone();
    up.chain[0].role = Role::Node;
    assert_eq!(
        trust.verify(&up, &p, NOW),
        Err(AuthError::BadSignature("a certificate"))
    );
    let mut longer = client.clone();
    longer.chain[0].not_after += DAY;
    assert_eq!(
        trust.verify(&longer, &p, NOW),
        Err(AuthError::BadSignature("a certificate"))
    );
    let mut short_sig = client.clone();
    short_sig.chain[0].signature.pop();
    assert!(trust.verify(&short_sig, &p, NOW).is_err());
    assert!(trust
        .verify(&Credential { chain: vec![] }, &p, NOW)
        .is_err());
}

#[test]
fn an_invite_certifies_any_number_of_peers_within_its_bounds() {
    let auth = Authority::generate("lab").unwrap();
    let invite = auth.invite(Role::Client, NOW, NOW + DAY);
    let trust = auth.trust();
    for _ in 0..3 {
        let (_, p) = peer();
        let cred = invite.credential_for(&p, NOW + 5).unwrap();
        let m = trust.verify(&cred, &p, NOW + 6).unwrap();
        assert_eq!(m.role, Role::Client);
        assert_eq!(m.not_after, NOW + DAY);
        assert_eq!(m.keys.len(), 2);
    }
    // A leaf that claims more than its invite allows is refused, though well signed.
    let (_, p) = peer();
    let mut cred = invite.credential_for(&p, NOW).unwrap();
    cred.chain[1] = sign_cert(
        &invite.key,
        "lab",
        peer_key(&p).unwrap(),
        Role::Node,
        false,
        NOW,
        NOW + DAY,
    );
    assert_eq!(
        trust.verify(&cred, &p, NOW),
        Err(AuthError::BadChain("a role above the issuer's"))
    );
    cred.chain[1] = sign_cert(
        &invite.key,
        "lab",
        peer_key(&p).unwrap(),
        Role::Client,
        false,
        NOW,
        NOW + 2 * DAY,
    );
    assert_eq!(
        trust.verify(&cred, &p, NOW),
        Err(AuthError::BadChain("a validity outside the issuer's"))
    );
    // An invite cannot make invites; a plain member cannot certify others.
    cred.chain[1] = sign_cert(
        &invite.key,
        "lab",
        peer_key(&p).unwrap(),
        Role::Client,
        true,
        NOW,
        NOW + DAY,
    );
    assert!(trust.verify(&cred, &p, NOW).is_err());
    let (k, member) = peer();
    let direct = auth
        .credential_for(&member, Role::Node, NOW, NOW + DAY)
        .unwrap();
    let ed = k.try_into_ed25519().unwrap();
    let forged = Credential {
        chain: vec![
            direct.chain[0].clone(),
            sign_cert(
                &ed,
                "lab",
                peer_key(&p).unwrap(),
                Role::Node,
                false,
                NOW,
                NOW + DAY,
            ),
        ],
    };
    assert_eq!(
        trust.verify(&forged, &p, NOW),
        Err(AuthError::BadChain("an issuer that may not certify others"))
    );
    // The invite itself is no peer credential.
    let as_peer = Credential {
        chain: vec![invite.cert.clone()],
    };
    let invite_peer = key_peer(&invite.public()).unwrap();
    assert!(trust.verify(&as_peer, &invite_peer, NOW).is_err());
}

#[test]
fn revoking_a_peer_or_its_invite_removes_it_and_only_the_authority_can() {
    let auth = Authority::generate("lab").unwrap();
    let invite = auth.invite(Role::Node, NOW, NOW + DAY);
    let (_, a) = peer();
    let (_, b) = peer();
    let (_, c) = peer();
    let ca = invite.credential_for(&a, NOW).unwrap();
    let cb = invite.credential_for(&b, NOW).unwrap();
    let cc = auth.credential_for(&c, Role::Node, NOW, NOW + DAY).unwrap();
    let mut trust = auth.trust();
    let r = auth.revoke(peer_key(&a).unwrap(), NOW);
    assert_eq!(trust.add_revocation(&r), Ok(true));
    assert_eq!(trust.add_revocation(&r), Ok(false));
    assert_eq!(trust.verify(&ca, &a, NOW), Err(AuthError::Revoked));
    trust.verify(&cb, &b, NOW).unwrap();
    // The invite: every peer it certified goes, the others stay.
    let r = auth.revoke(invite.public(), NOW);
    assert_eq!(
        trust.add_revocation(&Revocation::from_text(&r.to_text()).unwrap()),
        Ok(true)
    );
    assert_eq!(trust.verify(&cb, &b, NOW), Err(AuthError::Revoked));
    trust.verify(&cc, &c, NOW).unwrap();
    // Signed by someone else, or edited: refused.
    let stranger = Authority::generate("lab").unwrap();
    assert_eq!(
        trust.add_revocation(&stranger.revoke(peer_key(&c).unwrap(), NOW)),
        Err(AuthError::WrongAuthority)
    );
    let mut edited = auth.revoke(peer_key(&b).unwrap(), NOW);
    edited.subject = peer_key(&c).unwrap();
    assert_eq!(
        trust.add_revocation(&edited),
        Err(AuthError::BadSignature("a revocation"))
    );
    trust.verify(&cc, &c, NOW).unwrap();
}

#[test]
fn tokens_and_key_files_round_trip_and_garbage_is_a_typed_error() {
    let auth = Authority::generate("lab").unwrap();
    let again = Authority::from_text(&auth.to_text()).unwrap();
    assert_eq!(again.public(), auth.public());
    assert_eq!(again.mesh(), "lab");

    let invite = auth.invite(Role::Node, NOW, NOW + DAY);
    let token = JoinToken {
        trust: auth.trust(),
        bootstrap: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        proof: Proof::Invite(Box::new(invite)),
    };
    let text = token.to_text();
    assert!(text.starts_with(TOKEN_PREFIX));
    let parsed = JoinToken::from_text(&text).unwrap();
    assert_eq!(parsed.bootstrap, token.bootstrap);
    let (_, p) = peer();
    let cred = parsed.credential(&p, NOW + 1).unwrap();
    auth.trust().verify(&cred, &p, NOW + 2).unwrap();

    let direct = JoinToken {
        trust: auth.trust(),
        bootstrap: vec![],
        proof: Proof::Credential(
            auth.credential_for(&p, Role::Client, NOW, NOW + DAY)
                .unwrap(),
        ),
    };
    let parsed = JoinToken::from_text(&direct.to_text()).unwrap();
    let (_, q) = peer();
    assert_eq!(
        parsed.credential(&q, NOW).unwrap_err(),
        AuthError::WrongPeer
    );
    assert_eq!(
        auth.trust()
            .verify(&parsed.credential(&p, NOW).unwrap(), &p, NOW)
            .unwrap()
            .role,
        Role::Client
    );

    // A token whose authority was swapped for another no longer verifies its proof.
    let stranger = Authority::generate("lab").unwrap();
    let swapped = JoinToken {
        trust: stranger.trust(),
        ..direct.clone()
    };
    assert_eq!(
        JoinToken::from_text(&swapped.to_text()).unwrap_err(),
        AuthError::WrongAuthority
    );

    for bad in [
        "",
        "hello",
        TOKEN_PREFIX,
        "shoal-join-1-!!!!",
        "shoal-join-1-AAAA",
    ] {
        assert!(
            matches!(JoinToken::from_text(bad), Err(AuthError::Malformed(_))),
            "{bad:?}"
        );
    }
    assert!(Revocation::from_text("shoal-revoke-1-AAAA").is_err());
    assert!(Authority::from_text("shoal-authority-1-").is_err());
    assert!(Authority::generate("no spaces").is_err());
    assert_eq!(parse_hex_key(&hex(&auth.public())).unwrap(), auth.public());
    assert!(parse_hex_key("zz").is_err());
}

#[test]
fn peer_ids_and_keys_convert_both_ways() {
    let (k, p) = peer();
    let key = peer_key(&p).unwrap();
    assert_eq!(key, k.public().try_into_ed25519().unwrap().to_bytes());
    assert_eq!(key_peer(&key).unwrap(), p);
    assert!(peer_key(&PeerId::random()).is_err());
}

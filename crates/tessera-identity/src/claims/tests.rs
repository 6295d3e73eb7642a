use super::*;

/// Valid claims for `spiffe://acme.corp/client/code-reviewer/task/<ULID>`.
pub(crate) fn sample_claims() -> TaskClaims {
    TaskClaims {
        version: TASK_CLAIMS_VERSION,
        task_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap(),
        client_id: "spiffe://acme.corp/client/code-reviewer".parse().unwrap(),
        subject: "alice@acme.corp".into(),
        purpose: "Review PR #42 — naïve résumé".into(),
        server: "spiffe://acme.corp/mcp/github".parse().unwrap(),
        scopes: vec![
            "github/tool/get_pull_request".parse().unwrap(),
            "github/tool/list_*".parse().unwrap(),
            "github/resource/repo://acme/app/*".parse().unwrap(),
        ],
        consent_id: "01J9ZC0NSENT.rec-1_a".into(),
        deadline_unix: 1_900_000_000,
    }
}

#[test]
fn oid_bytes_match_dotted_form_and_arcs() {
    // Decode base-128 arcs from the DER bytes and compare with the dotted string.
    let bytes = task_claims_oid_der();
    let first = u64::from(bytes[0]);
    let mut arcs = vec![first / 40, first % 40];
    let mut acc: u128 = 0;
    for &b in &bytes[1..] {
        acc = (acc << 7) | u128::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(u64::try_from(acc).unwrap());
            acc = 0;
        }
    }
    assert_eq!(bytes.last().unwrap() & 0x80, 0);
    assert_eq!(arcs, TASK_CLAIMS_OID_ARCS);
    let dotted: Vec<String> = arcs.iter().map(ToString::to_string).collect();
    assert_eq!(dotted.join("."), TASK_CLAIMS_OID);
    assert_eq!(task_claims_oid().as_bytes(), bytes);
    assert_eq!(task_claims_oid().to_id_string(), TASK_CLAIMS_OID);
}

#[test]
fn round_trips_byte_identically() {
    let claims = sample_claims();
    claims.validate().unwrap();
    let der = claims.to_der();
    let back = TaskClaims::from_der(&der).unwrap();
    assert_eq!(back, claims);
    assert_eq!(back.to_der(), der);

    let mut minimal = sample_claims();
    minimal.purpose = String::new();
    minimal.scopes.truncate(1);
    minimal.deadline_unix = -1;
    let der = minimal.to_der();
    assert_eq!(TaskClaims::from_der(&der).unwrap(), minimal);
}

#[test]
fn encoding_starts_with_the_documented_structure() {
    let der = sample_claims().to_der();
    // SEQUENCE, long-form length, then version INTEGER 1 and the task id UTF8String.
    assert_eq!(der[0], 0x30);
    let body = &der[2 + usize::from(der[1] & 0x7f)..];
    assert_eq!(&body[..3], &[0x02, 0x01, 0x01]);
    assert_eq!(&body[3..5], &[0x0c, 26]);
    assert_eq!(&body[5..31], b"01ARZ3NDEKTSV4RRFFQ69G5FAV");
}

#[test]
fn rejects_malformed_encodings() {
    let der = sample_claims().to_der();
    for cut in [0, 1, 2, der.len() / 2, der.len() - 1] {
        assert!(
            matches!(TaskClaims::from_der(&der[..cut]), Err(ClaimsError::Der(_))),
            "truncated at {cut}"
        );
    }
    let mut trailing = der.clone();
    trailing.push(0);
    assert!(matches!(
        TaskClaims::from_der(&trailing),
        Err(ClaimsError::Der(_))
    ));
    let oversized = vec![0u8; MAX_CLAIMS_DER_LEN + 1];
    assert_eq!(
        TaskClaims::from_der(&oversized).unwrap_err(),
        ClaimsError::TooLarge {
            len: MAX_CLAIMS_DER_LEN + 1,
            max: MAX_CLAIMS_DER_LEN
        }
    );
    // A non-minimal length of the outer SEQUENCE (an extra leading zero octet) is BER,
    // not DER.
    assert!(der[1] & 0x80 != 0, "sample claims use the long length form");
    let len_octets = usize::from(der[1] & 0x7f);
    let mut long_len = vec![0x30, 0x80 | u8::try_from(len_octets + 1).unwrap(), 0x00];
    long_len.extend_from_slice(&der[2..]);
    assert!(matches!(
        TaskClaims::from_der(&long_len),
        Err(ClaimsError::Der(_))
    ));
    // An INTEGER version with a redundant leading zero octet is not DER either.
    let body_start = 2 + len_octets;
    let mut padded_version = der[..body_start].to_vec();
    padded_version.extend_from_slice(&[0x02, 0x02, 0x00, 0x01]);
    padded_version.extend_from_slice(&der[body_start + 3..]);
    let new_len = u16::try_from(padded_version.len() - body_start).unwrap();
    assert_eq!(len_octets, 2, "sample claims body is 256..65536 bytes");
    padded_version[2..4].copy_from_slice(&new_len.to_be_bytes());
    assert!(matches!(
        TaskClaims::from_der(&padded_version),
        Err(ClaimsError::Der(_))
    ));
    assert!(matches!(
        TaskClaims::from_der(b"\x04\x00"),
        Err(ClaimsError::Der(_))
    ));
}

#[test]
fn rejects_each_field_rule() {
    type Mutate = fn(&mut TaskClaims);
    let cases: Vec<(&str, Mutate, ClaimsError)> = vec![
        (
            "version 2",
            |c| c.version = 2,
            ClaimsError::UnsupportedVersion { version: 2 },
        ),
        (
            "version 0",
            |c| c.version = 0,
            ClaimsError::UnsupportedVersion { version: 0 },
        ),
        (
            "trust domain mismatch",
            |c| c.server = "spiffe://other.corp/mcp/github".parse().unwrap(),
            ClaimsError::TrustDomainMismatch {
                client: "acme.corp".parse().unwrap(),
                server: "other.corp".parse().unwrap(),
            },
        ),
        (
            "empty subject",
            |c| c.subject.clear(),
            ClaimsError::SubjectEmpty,
        ),
        (
            "subject too long",
            |c| c.subject = "a".repeat(MAX_SUBJECT_LEN + 1),
            ClaimsError::SubjectTooLong {
                len: MAX_SUBJECT_LEN + 1,
                max: MAX_SUBJECT_LEN,
            },
        ),
        (
            "newline in subject",
            |c| c.subject = "alice\nadmin".into(),
            ClaimsError::ForbiddenChar {
                field: TextField::Subject,
                index: 5,
                ch: '\n',
            },
        ),
        (
            "nul in subject",
            |c| c.subject = "a\0".into(),
            ClaimsError::ForbiddenChar {
                field: TextField::Subject,
                index: 1,
                ch: '\0',
            },
        ),
        (
            "bidi override in subject",
            |c| c.subject = "a\u{202E}b".into(),
            ClaimsError::ForbiddenChar {
                field: TextField::Subject,
                index: 1,
                ch: '\u{202E}',
            },
        ),
        (
            "escape in purpose",
            |c| c.purpose = "x\u{1b}[31m".into(),
            ClaimsError::ForbiddenChar {
                field: TextField::Purpose,
                index: 1,
                ch: '\u{1b}',
            },
        ),
        (
            "c1 control in purpose",
            |c| c.purpose = "x\u{85}".into(),
            ClaimsError::ForbiddenChar {
                field: TextField::Purpose,
                index: 1,
                ch: '\u{85}',
            },
        ),
        (
            "purpose too long",
            |c| c.purpose = "p".repeat(MAX_PURPOSE_LEN + 1),
            ClaimsError::PurposeTooLong {
                len: MAX_PURPOSE_LEN + 1,
                max: MAX_PURPOSE_LEN,
            },
        ),
        ("no scopes", |c| c.scopes.clear(), ClaimsError::NoScopes),
        (
            "too many scopes",
            |c| {
                c.scopes = (0..=MAX_SCOPES)
                    .map(|i| format!("github/tool/t{i}").parse().unwrap())
                    .collect();
            },
            ClaimsError::TooManyScopes {
                count: MAX_SCOPES + 1,
                max: MAX_SCOPES,
            },
        ),
        (
            "scope for another server",
            |c| c.scopes.push("docs/tool/x".parse().unwrap()),
            ClaimsError::ScopeServerMismatch {
                index: 3,
                scope_server: "docs".into(),
                server: "github".into(),
            },
        ),
        (
            "empty consent id",
            |c| c.consent_id.clear(),
            ClaimsError::ConsentIdEmpty,
        ),
        (
            "consent id too long",
            |c| c.consent_id = "c".repeat(MAX_CONSENT_ID_LEN + 1),
            ClaimsError::ConsentIdTooLong {
                len: MAX_CONSENT_ID_LEN + 1,
                max: MAX_CONSENT_ID_LEN,
            },
        ),
        (
            "consent id bad char",
            |c| c.consent_id = "a/b".into(),
            ClaimsError::ConsentIdInvalidChar { index: 1, ch: '/' },
        ),
    ];
    for (case, mutate, want) in cases {
        let mut claims = sample_claims();
        mutate(&mut claims);
        assert_eq!(claims.validate().unwrap_err(), want, "validate: {case}");
        // The same claims, encoded, must be refused by the decoder too.
        assert_eq!(
            TaskClaims::from_der(&claims.to_der()).unwrap_err(),
            want,
            "from_der: {case}"
        );
    }
    let mut max = sample_claims();
    max.scopes = (0..MAX_SCOPES)
        .map(|i| format!("github/tool/t{i}").parse().unwrap())
        .collect();
    max.subject = "s".repeat(MAX_SUBJECT_LEN);
    max.purpose = "p".repeat(MAX_PURPOSE_LEN);
    max.consent_id = "c".repeat(MAX_CONSENT_ID_LEN);
    assert_eq!(TaskClaims::from_der(&max.to_der()).unwrap(), max);
}

#[test]
fn rejects_invalid_ids_and_scopes_on_the_wire() {
    let raw = |f: fn(&mut RawClaims)| {
        let c = sample_claims();
        let mut r = RawClaims {
            version: c.version,
            task_id: c.task_id.to_string(),
            client_id: c.client_id.to_string(),
            subject: c.subject,
            purpose: c.purpose,
            server: c.server.to_string(),
            scopes: c.scopes.iter().map(ToString::to_string).collect(),
            consent_id: c.consent_id,
            deadline: c.deadline_unix,
        };
        f(&mut r);
        TaskClaims::from_der(&r.to_der().unwrap())
    };
    assert!(matches!(
        raw(|r| r.task_id = r.task_id.to_lowercase()),
        Err(ClaimsError::InvalidTaskId(_))
    ));
    assert!(matches!(
        raw(|r| r.client_id = "spiffe://acme.corp/mcp/github".into()),
        Err(ClaimsError::InvalidClientId(IdError::WrongKind { .. }))
    ));
    assert!(matches!(
        raw(|r| r.server = "spiffe://acme.corp/mcp/github/".into()),
        Err(ClaimsError::InvalidServerId(IdError::TrailingSlash))
    ));
    assert!(matches!(
        raw(|r| r.scopes[1] = "github/tool/*x".into()),
        Err(ClaimsError::InvalidScope { index: 1, .. })
    ));
    assert!(matches!(
        raw(|r| r.version = 7),
        Err(ClaimsError::UnsupportedVersion { version: 7 })
    ));
}

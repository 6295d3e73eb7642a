use super::*;

fn client(name: &str) -> ClientId {
    ClientId::new("acme.corp".parse().unwrap(), name.parse().unwrap())
}

fn message() -> pb::BeginTaskRequest {
    pb::BeginTaskRequest {
        purpose: "review PR 42".into(),
        subject: "alice@acme.corp".into(),
        server: "github".into(),
        scopes: vec!["github/tool/get_*".into(), "github/prompt/review".into()],
        lifetime_secs: 0,
        client: String::new(),
        bind_to_parent: false,
    }
}

/// What the caller is told when `edit` is applied to a valid request.
fn refusal(clients: &[ClientId], edit: impl FnOnce(&mut pb::BeginTaskRequest)) -> Status {
    let mut req = message();
    edit(&mut req);
    Status::from(BeginTaskRequest::parse(req, clients).unwrap_err())
}

#[test]
fn a_valid_request_parses_into_typed_parts() {
    let mut req = message();
    req.server = "spiffe://acme.corp/mcp/github".into();
    req.lifetime_secs = 90;
    req.bind_to_parent = true;
    let parsed = BeginTaskRequest::parse(req, &[client("code-reviewer")]).unwrap();
    assert_eq!(parsed.client, client("code-reviewer"));
    assert_eq!(parsed.server.as_str(), "github");
    assert_eq!(parsed.subject, "alice@acme.corp");
    assert_eq!(parsed.purpose, "review PR 42");
    let scopes: Vec<String> = parsed.scopes.iter().map(ToString::to_string).collect();
    assert_eq!(scopes, ["github/tool/get_*", "github/prompt/review"]);
    assert_eq!(parsed.lifetime, Some(Duration::from_secs(90)));
    assert!(parsed.bind_to_parent);
}

#[test]
fn the_named_client_is_chosen_among_the_callers() {
    let mut req = message();
    req.client = "b".into();
    let parsed = BeginTaskRequest::parse(req, &[client("a"), client("b")]).unwrap();
    assert_eq!(parsed.client, client("b"));
    assert_eq!(parsed.lifetime, None);
}

#[test]
fn the_limits_are_identitys_and_inclusive() {
    let parsed = BeginTaskRequest::parse(
        pb::BeginTaskRequest {
            subject: "s".repeat(MAX_SUBJECT_LEN),
            purpose: "p".repeat(MAX_PURPOSE_LEN),
            scopes: (0..MAX_SCOPES)
                .map(|i| format!("github/tool/t{i}"))
                .collect(),
            ..message()
        },
        &[client("c")],
    )
    .unwrap();
    assert_eq!(parsed.scopes.len(), MAX_SCOPES);
    assert_eq!(
        (MAX_SUBJECT_LEN, MAX_PURPOSE_LEN, MAX_SCOPES),
        (256, 1024, 64)
    );
}

#[test]
fn each_refusal_keeps_its_code_and_message() {
    let one = [client("code-reviewer")];
    let cases: Vec<(Status, tonic::Code, &str)> = vec![
        (
            refusal(&[client("a"), client("b")], |_| {}),
            tonic::Code::InvalidArgument,
            "this caller has several client identities (a, b); name one in `client`",
        ),
        (
            refusal(&one, |r| r.client = "other".into()),
            tonic::Code::PermissionDenied,
            "this caller is not client \"other\"",
        ),
        (
            refusal(&one, |r| r.server = "spiffe://evil.corp/mcp/github".into()),
            tonic::Code::InvalidArgument,
            "server spiffe://evil.corp/mcp/github is not in trust domain acme.corp",
        ),
        (
            refusal(&one, |r| r.subject = String::new()),
            tonic::Code::InvalidArgument,
            "subject must be 1..=256 bytes",
        ),
        (
            refusal(&one, |r| r.subject = "s".repeat(257)),
            tonic::Code::InvalidArgument,
            "subject must be 1..=256 bytes",
        ),
        (
            refusal(&one, |r| r.purpose = "p".repeat(1025)),
            tonic::Code::InvalidArgument,
            "purpose must be at most 1024 bytes",
        ),
        (
            refusal(&one, |r| r.scopes.clear()),
            tonic::Code::InvalidArgument,
            "request 1..=64 scopes",
        ),
        (
            refusal(&one, |r| {
                r.scopes = (0..65).map(|i| format!("github/tool/t{i}")).collect();
            }),
            tonic::Code::InvalidArgument,
            "request 1..=64 scopes",
        ),
        (
            refusal(&one, |r| r.scopes.push("docs/tool/read".into())),
            tonic::Code::InvalidArgument,
            "scope \"docs/tool/read\" is for server \"docs\", but the task is for \"github\"",
        ),
    ];
    for (status, code, message) in cases {
        assert_eq!((status.code(), status.message()), (code, message));
    }
    // Parse errors carry the identity crate's reason after the field.
    let bad_server = refusal(&one, |r| r.server = "git hub".into());
    assert_eq!(bad_server.code(), tonic::Code::InvalidArgument);
    assert!(
        bad_server.message().starts_with("server \"git hub\": "),
        "{bad_server:?}"
    );
    let bad_scope = refusal(&one, |r| r.scopes.push("github/tool/a*b".into()));
    assert_eq!(bad_scope.code(), tonic::Code::InvalidArgument);
    assert!(
        bad_scope
            .message()
            .starts_with("scope \"github/tool/a*b\": "),
        "{bad_scope:?}"
    );
}

#[test]
fn the_first_bad_field_is_the_one_reported() {
    // Everything is wrong; the client is checked first, then the server, and so on.
    let status = refusal(&[client("c")], |r| {
        r.client = "nobody".into();
        r.server = "git hub".into();
        r.subject = String::new();
    });
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = refusal(&[client("c")], |r| {
        r.subject = String::new();
        r.purpose = "p".repeat(2000);
        r.scopes.clear();
    });
    assert_eq!(status.message(), "subject must be 1..=256 bytes");
}

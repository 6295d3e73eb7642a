//! Every shape parses what it prints; every other path is refused.

use super::*;

const ULID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

#[test]
fn parses_each_shape_and_prints_it_back() {
    let client = "spiffe://acme.corp/client/code-reviewer".to_owned();
    let task = format!("{client}/task/{ULID}");
    let server = "spiffe://acme.corp/mcp/github".to_owned();

    let c: ClientId = client.parse().unwrap();
    assert_eq!(c.trust_domain().as_str(), "acme.corp");
    assert_eq!(c.name.as_str(), "code-reviewer");
    assert_eq!(c.to_string(), client);

    let t: TaskSpiffeId = task.parse().unwrap();
    assert_eq!(t.client, c);
    assert_eq!(t.task.to_string(), ULID);
    assert_eq!(t.trust_domain().as_str(), "acme.corp");
    assert_eq!(t.to_string(), task);
    assert_eq!(c.task(t.task), t);

    let s: ServerId = server.parse().unwrap();
    assert_eq!(s.name.as_str(), "github");
    assert_eq!(s.to_string(), server);

    for (input, kind) in [
        (&client, IdKind::Client),
        (&task, IdKind::Task),
        (&server, IdKind::Server),
    ] {
        let id: TesseraId = input.parse().unwrap();
        assert_eq!(id.kind(), kind);
        assert_eq!(&id.to_string(), input);
        assert_eq!(id.trust_domain().as_str(), "acme.corp");
    }
}

#[test]
fn rejects_valid_spiffe_ids_of_other_shapes() {
    let long_name = "x".repeat(129);
    let long_client = format!("spiffe://td/client/{long_name}");
    let cases: Vec<(&str, String, IdError)> = vec![
        (
            "trust domain id",
            "spiffe://td".into(),
            IdError::UnrecognizedPath { path: "".into() },
        ),
        (
            "client without name",
            "spiffe://td/client".into(),
            IdError::UnrecognizedPath {
                path: "/client".into(),
            },
        ),
        (
            "client with extra segment",
            "spiffe://td/client/a/extra".into(),
            IdError::UnrecognizedPath {
                path: "/client/a/extra".into(),
            },
        ),
        (
            "task without id",
            "spiffe://td/client/a/task".into(),
            IdError::UnrecognizedPath {
                path: "/client/a/task".into(),
            },
        ),
        (
            "task with extra segment",
            format!("spiffe://td/client/a/task/{ULID}/x"),
            IdError::UnrecognizedPath {
                path: format!("/client/a/task/{ULID}/x"),
            },
        ),
        (
            "wrong third segment",
            format!("spiffe://td/client/a/tasks/{ULID}"),
            IdError::UnrecognizedPath {
                path: format!("/client/a/tasks/{ULID}"),
            },
        ),
        (
            "uppercase kind segment",
            "spiffe://td/Client/a".into(),
            IdError::UnrecognizedPath {
                path: "/Client/a".into(),
            },
        ),
        (
            "unknown kind",
            "spiffe://td/ns/default/sa/x".into(),
            IdError::UnrecognizedPath {
                path: "/ns/default/sa/x".into(),
            },
        ),
        (
            "server with extra segment",
            "spiffe://td/mcp/github/x".into(),
            IdError::UnrecognizedPath {
                path: "/mcp/github/x".into(),
            },
        ),
        (
            "task id not a ulid",
            "spiffe://td/client/a/task/not-a-ulid".into(),
            IdError::InvalidTaskId {
                value: "not-a-ulid".into(),
            },
        ),
        (
            "lowercase ulid",
            format!("spiffe://td/client/a/task/{}", ULID.to_lowercase()),
            IdError::InvalidTaskId {
                value: ULID.to_lowercase(),
            },
        ),
        (
            "client name too long",
            long_client,
            IdError::NameTooLong { len: 129, max: 128 },
        ),
        (
            "generic rule still applies",
            "spiffe://td/client/a/".into(),
            IdError::TrailingSlash,
        ),
    ];
    for (case, input, want) in cases {
        assert_eq!(
            input.parse::<TesseraId>().unwrap_err(),
            want,
            "case: {case}"
        );
    }
}

#[test]
fn typed_parsers_reject_other_kinds() {
    let client = "spiffe://td/client/a";
    let task = format!("{client}/task/{ULID}");
    let server = "spiffe://td/mcp/a";
    let wrong = |expected, found| IdError::WrongKind { expected, found };
    assert_eq!(
        task.parse::<ClientId>().unwrap_err(),
        wrong(IdKind::Client, IdKind::Task)
    );
    assert_eq!(
        server.parse::<ClientId>().unwrap_err(),
        wrong(IdKind::Client, IdKind::Server)
    );
    assert_eq!(
        client.parse::<TaskSpiffeId>().unwrap_err(),
        wrong(IdKind::Task, IdKind::Client)
    );
    assert_eq!(
        client.parse::<ServerId>().unwrap_err(),
        wrong(IdKind::Server, IdKind::Client)
    );
}

#[test]
fn node_and_admin_ids_parse_and_print_back() {
    let node: NodeId = "spiffe://acme.corp/node/worker-1".parse().unwrap();
    assert_eq!(node.trust_domain().as_str(), "acme.corp");
    assert_eq!(node.name.as_str(), "worker-1");
    assert_eq!(node.to_string(), "spiffe://acme.corp/node/worker-1");
    let admin: AdminId = "spiffe://acme.corp/admin/alice".parse().unwrap();
    assert_eq!(admin.name.as_str(), "alice");
    assert_eq!(admin.to_string(), "spiffe://acme.corp/admin/alice");
    for (input, kind) in [
        ("spiffe://acme.corp/node/worker-1", IdKind::Node),
        ("spiffe://acme.corp/admin/alice", IdKind::Admin),
        ("spiffe://acme.corp/client/a", IdKind::Client),
        ("spiffe://acme.corp/mcp/github", IdKind::Server),
    ] {
        let id: AnyId = input.parse().unwrap();
        assert_eq!(id.kind(), kind);
        assert_eq!(id.to_string(), input);
        assert_eq!(id.trust_domain().as_str(), "acme.corp");
    }
}

#[test]
fn control_plane_ids_are_not_workload_ids_and_vice_versa() {
    let node = "spiffe://td/node/n1";
    let admin = "spiffe://td/admin/a";
    assert_eq!(
        node.parse::<TesseraId>().unwrap_err(),
        IdError::UnrecognizedPath {
            path: "/node/n1".into()
        }
    );
    assert_eq!(
        admin.parse::<TesseraId>().unwrap_err(),
        IdError::UnrecognizedPath {
            path: "/admin/a".into()
        }
    );
    assert_eq!(
        node.parse::<ClientId>().unwrap_err(),
        IdError::WrongKind {
            expected: IdKind::Client,
            found: IdKind::Node
        }
    );
    assert_eq!(
        admin.parse::<NodeId>().unwrap_err(),
        IdError::WrongKind {
            expected: IdKind::Node,
            found: IdKind::Admin
        }
    );
    assert_eq!(
        "spiffe://td/mcp/x".parse::<AdminId>().unwrap_err(),
        IdError::WrongKind {
            expected: IdKind::Admin,
            found: IdKind::Server
        }
    );
}

#[test]
fn rejects_malformed_node_and_admin_ids() {
    let long = format!("spiffe://td/node/{}", "x".repeat(129));
    let cases: Vec<(&str, String, IdError)> = vec![
        (
            "node without name",
            "spiffe://td/node".into(),
            IdError::UnrecognizedPath {
                path: "/node".into(),
            },
        ),
        (
            "node with extra segment",
            "spiffe://td/node/a/b".into(),
            IdError::UnrecognizedPath {
                path: "/node/a/b".into(),
            },
        ),
        (
            "admin with extra segment",
            "spiffe://td/admin/a/b".into(),
            IdError::UnrecognizedPath {
                path: "/admin/a/b".into(),
            },
        ),
        (
            "uppercase node segment",
            "spiffe://td/Node/a".into(),
            IdError::UnrecognizedPath {
                path: "/Node/a".into(),
            },
        ),
        (
            "node name too long",
            long,
            IdError::NameTooLong { len: 129, max: 128 },
        ),
        (
            "trailing slash",
            "spiffe://td/node/a/".into(),
            IdError::TrailingSlash,
        ),
    ];
    for (case, input, want) in cases {
        assert_eq!(input.parse::<AnyId>().unwrap_err(), want, "case: {case}");
    }
}

//! Property tests: every id and scope type parses exactly what it prints.

use proptest::prelude::*;

use crate::{
    AdminId, AnyId, ClientId, NodeCaExtension, NodeId, Scope, ScopeKind, ServerId, TaskId,
    TaskSpiffeId, TesseraId, Ulid,
};

fn trust_domain() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,64}"
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{1,128}".prop_filter("dot segment", |n| n != "." && n != "..")
}

fn task_id() -> impl Strategy<Value = TaskId> {
    any::<u128>().prop_map(|n| TaskId::from_ulid(Ulid(n)))
}

fn scope_string() -> impl Strategy<Value = String> {
    let named = prop_oneof![Just("*".to_owned()), "[a-zA-Z0-9._-]{1,128}\\*?",];
    // A URI of printable ASCII without space, `*`, `%` or `\` (`?` only to start the
    // query, no `#`): scheme, an optional authority, path segments that are neither empty nor
    // dot segments, an optional query; then an optional trailing '*'. The shapes a
    // resource pattern may not have are tested case by case in `scope/tests.rs`.
    let segment = "[!-\"$&-)+-.0->@-\\[\\]-~]{1,20}".prop_filter("dot segment", |s| {
        let bare = s.split(';').next().unwrap_or(s);
        bare != "." && bare != ".."
    });
    let uri = (
        "[a-z][a-z0-9+.-]{0,7}",
        prop::option::of("[a-z0-9-]{0,12}"),
        prop::collection::vec(segment, 0..6),
        prop::option::of("[a-zA-Z0-9=&:/]{0,16}"),
        "\\*?",
    )
        .prop_map(|(scheme, authority, segments, query, star)| {
            let mut uri = format!("{scheme}:");
            if let Some(authority) = authority {
                uri.push_str(&format!("//{authority}"));
            }
            for segment in segments {
                uri.push('/');
                uri.push_str(&segment);
            }
            if let Some(query) = query {
                uri.push('?');
                uri.push_str(&query);
            }
            uri + &star
        });
    let resource = prop_oneof![Just("*".to_owned()), uri];
    prop_oneof![
        (name(), prop_oneof![Just("tool"), Just("prompt")], named)
            .prop_map(|(s, k, p)| format!("{s}/{k}/{p}")),
        (name(), resource).prop_map(|(s, p)| format!("{s}/resource/{p}")),
    ]
}

proptest! {
    #[test]
    fn client_id_round_trips(td in trust_domain(), n in name()) {
        let s = format!("spiffe://{td}/client/{n}");
        let id: ClientId = s.parse().unwrap();
        prop_assert_eq!(id.to_string(), s.clone());
        prop_assert_eq!(id.to_string().parse::<ClientId>().unwrap(), id.clone());
        prop_assert_eq!(s.parse::<TesseraId>().unwrap(), TesseraId::Client(id));
    }

    #[test]
    fn task_spiffe_id_round_trips(td in trust_domain(), n in name(), t in task_id()) {
        let s = format!("spiffe://{td}/client/{n}/task/{t}");
        let id: TaskSpiffeId = s.parse().unwrap();
        prop_assert_eq!(id.task, t);
        prop_assert_eq!(id.to_string(), s.clone());
        prop_assert_eq!(id.to_string().parse::<TaskSpiffeId>().unwrap(), id.clone());
        prop_assert_eq!(s.parse::<TesseraId>().unwrap(), TesseraId::Task(id));
    }

    #[test]
    fn server_id_round_trips(td in trust_domain(), n in name()) {
        let s = format!("spiffe://{td}/mcp/{n}");
        let id: ServerId = s.parse().unwrap();
        prop_assert_eq!(id.to_string(), s.clone());
        prop_assert_eq!(id.to_string().parse::<ServerId>().unwrap(), id.clone());
        prop_assert_eq!(s.parse::<TesseraId>().unwrap(), TesseraId::Server(id));
    }

    #[test]
    fn node_and_admin_ids_round_trip(td in trust_domain(), n in name()) {
        let s = format!("spiffe://{td}/node/{n}");
        let id: NodeId = s.parse().unwrap();
        prop_assert_eq!(id.to_string(), s.clone());
        prop_assert_eq!(s.parse::<AnyId>().unwrap(), AnyId::Node(id.clone()));
        let ext = NodeCaExtension::new(id);
        prop_assert_eq!(NodeCaExtension::from_der(&ext.to_der()).unwrap(), ext);
        let s = format!("spiffe://{td}/admin/{n}");
        let id: AdminId = s.parse().unwrap();
        prop_assert_eq!(id.to_string(), s.clone());
        prop_assert_eq!(s.parse::<AnyId>().unwrap(), AnyId::Admin(id));
    }

    #[test]
    fn task_id_round_trips(t in task_id()) {
        prop_assert_eq!(t.to_string().parse::<TaskId>().unwrap(), t);
    }

    #[test]
    fn scope_round_trips(s in scope_string()) {
        let scope: Scope = s.parse().unwrap();
        prop_assert_eq!(scope.to_string(), s.clone());
        prop_assert_eq!(scope.to_string().parse::<Scope>().unwrap(), scope.clone());
        prop_assert!(scope.covers(&scope));
    }

    #[test]
    fn exact_scope_permits_its_own_target(s in scope_string()) {
        let scope: Scope = s.parse().unwrap();
        if !scope.is_prefix() {
            prop_assert!(scope.permits(scope.server(), scope.kind(), scope.pattern()));
            let other = match scope.kind() {
                ScopeKind::Tool => ScopeKind::Prompt,
                _ => ScopeKind::Tool,
            };
            prop_assert!(!scope.permits(scope.server(), other, scope.pattern()));
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC{0,64}") {
        let _ = s.parse::<TesseraId>();
        let _ = s.parse::<AnyId>();
        let _ = NodeCaExtension::from_der(s.as_bytes());
        let _ = s.parse::<Scope>();
        let _ = crate::validate_spiffe_id(&s);
    }
}

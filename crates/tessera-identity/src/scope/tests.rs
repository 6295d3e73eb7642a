use super::*;

fn scope(s: &str) -> Scope {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn server(s: &str) -> ServerName {
    s.parse().unwrap()
}

#[test]
fn parses_examples_and_prints_them_back() {
    let cases = [
        (
            "github/tool/get_pull_request",
            "github",
            ScopeKind::Tool,
            "get_pull_request",
        ),
        ("github/tool/*", "github", ScopeKind::Tool, "*"),
        ("github/tool/get_*", "github", ScopeKind::Tool, "get_*"),
        (
            "docs/resource/file:///handbook/*",
            "docs",
            ScopeKind::Resource,
            "file:///handbook/*",
        ),
        ("docs/resource/*", "docs", ScopeKind::Resource, "*"),
        (
            "docs/resource/https://x.test/a?b=c&d=%20",
            "docs",
            ScopeKind::Resource,
            "https://x.test/a?b=c&d=%20",
        ),
        (
            "github/prompt/review",
            "github",
            ScopeKind::Prompt,
            "review",
        ),
    ];
    for (input, srv, kind, pattern) in cases {
        let s = scope(input);
        assert_eq!(s.server().as_str(), srv, "{input}");
        assert_eq!(s.kind(), kind, "{input}");
        assert_eq!(s.pattern(), pattern, "{input}");
        assert_eq!(s.to_string(), input);
    }
    let max_tool = format!("s/tool/{}*", "a".repeat(MAX_NAME_LEN));
    assert_eq!(scope(&max_tool).to_string(), max_tool);
    let max_res = format!("s/resource/{}", "a".repeat(MAX_RESOURCE_PATTERN_LEN));
    assert_eq!(scope(&max_res).to_string(), max_res);
}

#[test]
fn rejects_each_scope_rule() {
    let long_tool = format!("s/tool/{}", "a".repeat(MAX_NAME_LEN + 1));
    let long_res = format!("s/resource/{}", "a".repeat(MAX_RESOURCE_PATTERN_LEN + 1));
    let cases: Vec<(&str, &str, ScopeError)> = vec![
        ("empty", "", ScopeError::MissingPart { scope: "".into() }),
        (
            "server only",
            "github",
            ScopeError::MissingPart {
                scope: "github".into(),
            },
        ),
        (
            "no pattern separator",
            "github/tool",
            ScopeError::MissingPart {
                scope: "github/tool".into(),
            },
        ),
        (
            "empty server",
            "/tool/x",
            ScopeError::InvalidServer(IdError::NameEmpty),
        ),
        (
            "bad server char",
            "git hub/tool/x",
            ScopeError::InvalidServer(IdError::NameInvalidChar { index: 3, ch: ' ' }),
        ),
        (
            "dot server",
            "../tool/x",
            ScopeError::InvalidServer(IdError::NameDotSegment { name: "..".into() }),
        ),
        (
            "unknown kind",
            "github/tools/x",
            ScopeError::UnknownKind {
                kind: "tools".into(),
            },
        ),
        (
            "uppercase kind",
            "github/Tool/x",
            ScopeError::UnknownKind {
                kind: "Tool".into(),
            },
        ),
        ("empty pattern", "github/tool/", ScopeError::EmptyPattern),
        (
            "leading wildcard",
            "github/tool/*_pr",
            ScopeError::MisplacedWildcard { index: 0 },
        ),
        (
            "middle wildcard",
            "github/tool/get_*_pr",
            ScopeError::MisplacedWildcard { index: 4 },
        ),
        (
            "double wildcard",
            "github/tool/**",
            ScopeError::MisplacedWildcard { index: 0 },
        ),
        (
            "resource middle wildcard",
            "docs/resource/file:///*/x",
            ScopeError::MisplacedWildcard { index: 8 },
        ),
        (
            "slash in tool name",
            "github/tool/a/b",
            ScopeError::InvalidPatternChar {
                kind: ScopeKind::Tool,
                index: 1,
                ch: '/',
            },
        ),
        (
            "colon in prompt name",
            "github/prompt/a:b",
            ScopeError::InvalidPatternChar {
                kind: ScopeKind::Prompt,
                index: 1,
                ch: ':',
            },
        ),
        (
            "space in resource",
            "docs/resource/file:///a b",
            ScopeError::InvalidPatternChar {
                kind: ScopeKind::Resource,
                index: 9,
                ch: ' ',
            },
        ),
        (
            "control char in resource",
            "docs/resource/a\tb",
            ScopeError::InvalidPatternChar {
                kind: ScopeKind::Resource,
                index: 1,
                ch: '\t',
            },
        ),
        (
            "non-ascii resource",
            "docs/resource/é",
            ScopeError::InvalidPatternChar {
                kind: ScopeKind::Resource,
                index: 0,
                ch: 'é',
            },
        ),
        (
            "tool name too long",
            &long_tool,
            ScopeError::PatternTooLong {
                len: MAX_NAME_LEN + 1,
                max: MAX_NAME_LEN,
            },
        ),
        (
            "resource too long",
            &long_res,
            ScopeError::PatternTooLong {
                len: MAX_RESOURCE_PATTERN_LEN + 1,
                max: MAX_RESOURCE_PATTERN_LEN,
            },
        ),
    ];
    for (case, input, want) in cases {
        assert_eq!(input.parse::<Scope>().unwrap_err(), want, "case: {case}");
    }
}

#[test]
fn permits_exact_and_prefix_targets() {
    let gh = server("github");
    let docs = server("docs");
    let cases: Vec<(&str, &ServerName, ScopeKind, &str, bool)> = vec![
        ("github/tool/get_pr", &gh, ScopeKind::Tool, "get_pr", true),
        ("github/tool/get_pr", &gh, ScopeKind::Tool, "get_pr2", false),
        ("github/tool/get_pr", &gh, ScopeKind::Tool, "get_p", false),
        (
            "github/tool/get_pr",
            &docs,
            ScopeKind::Tool,
            "get_pr",
            false,
        ),
        (
            "github/tool/get_pr",
            &gh,
            ScopeKind::Prompt,
            "get_pr",
            false,
        ),
        ("github/tool/get_*", &gh, ScopeKind::Tool, "get_pr", true),
        ("github/tool/get_*", &gh, ScopeKind::Tool, "get_", true),
        ("github/tool/get_*", &gh, ScopeKind::Tool, "set_pr", false),
        ("github/tool/get_*", &gh, ScopeKind::Tool, "get_*", false),
        ("github/tool/*", &gh, ScopeKind::Tool, "anything", true),
        ("github/tool/*", &gh, ScopeKind::Tool, "", false),
        ("github/tool/*", &gh, ScopeKind::Tool, "a/b", false),
        (
            "github/prompt/review",
            &gh,
            ScopeKind::Prompt,
            "review",
            true,
        ),
        (
            "docs/resource/file:///handbook/*",
            &docs,
            ScopeKind::Resource,
            "file:///handbook/intro.md",
            true,
        ),
        (
            "docs/resource/file:///handbook/*",
            &docs,
            ScopeKind::Resource,
            "file:///handbook/../secrets",
            false,
        ),
        (
            "docs/resource/file:///handbook/*",
            &docs,
            ScopeKind::Resource,
            "file:///handbook/./x",
            false,
        ),
        (
            "docs/resource/file:///handbook/*",
            &docs,
            ScopeKind::Resource,
            "file:///handbook/%2E%2E/secrets",
            false,
        ),
        (
            "docs/resource/file:///handbook/*",
            &docs,
            ScopeKind::Resource,
            "file:///handbook/..%2fsecrets",
            false,
        ),
        (
            "docs/resource/file:///handbook/*",
            &docs,
            ScopeKind::Resource,
            "file:///handbook/..\\secrets",
            false,
        ),
        (
            "docs/resource/file:///handbook/*",
            &docs,
            ScopeKind::Resource,
            "file:///handbook/a b",
            false,
        ),
        (
            "docs/resource/file:///handbook/*",
            &docs,
            ScopeKind::Resource,
            "file:///handbook2/x",
            false,
        ),
        // Prefixes are raw strings: without a trailing '/', siblings match too.
        (
            "docs/resource/file:///handbook*",
            &docs,
            ScopeKind::Resource,
            "file:///handbook2/x",
            true,
        ),
        (
            "docs/resource/file:///handbook/*",
            &docs,
            ScopeKind::Resource,
            "file:///other",
            false,
        ),
        (
            "docs/resource/file:///a/b",
            &docs,
            ScopeKind::Resource,
            "file:///a/b",
            true,
        ),
    ];
    for (pattern, srv, kind, target, want) in cases {
        assert_eq!(
            scope(pattern).permits(srv, kind, target),
            want,
            "{pattern} on {srv}/{kind}/{target}"
        );
    }
}

/// Issue 13: targets a file server may normalize or decode into a path outside the
/// prefix. Each is refused by `file:///handbook/*`, and the same string as a
/// pattern is refused at parse time.
#[test]
fn prefix_refuses_targets_a_server_may_read_as_another_path() {
    let docs = server("docs");
    let handbook = scope("docs/resource/file:///handbook/*");
    let cases = [
        (
            "file:///handbook//etc/passwd",
            UnsafeShape::EmptySegment,
            16,
        ),
        ("file:///handbook/a//b", UnsafeShape::EmptySegment, 18),
        (
            "file:///handbook/..;/etc/passwd",
            UnsafeShape::DotSegment,
            17,
        ),
        ("file:///handbook/.;x/y", UnsafeShape::DotSegment, 17),
        (
            "file:///handbook/a/..;jsessionid=1",
            UnsafeShape::DotSegment,
            19,
        ),
        ("file:///handbook/a?x=1/..", UnsafeShape::DotSegment, 23),
        (
            "file:///handbook/%252e%252e/etc",
            UnsafeShape::EncodedPercent,
            17,
        ),
        ("file:///handbook/%25", UnsafeShape::EncodedPercent, 17),
        (
            "file:///handbook/%2E%2e/x",
            UnsafeShape::EncodedDotOrSeparator,
            17,
        ),
        (
            "file:///handbook/a%5Cb",
            UnsafeShape::EncodedDotOrSeparator,
            18,
        ),
        ("file:///handbook/a%2", UnsafeShape::MalformedEscape, 18),
        ("file:///handbook/a%zz", UnsafeShape::MalformedEscape, 18),
        ("file:///handbook/%u002e", UnsafeShape::MalformedEscape, 17),
        ("file:///handbook/..\\x", UnsafeShape::Backslash, 19),
    ];
    for (target, shape, index) in cases {
        assert!(
            !handbook.permits(&docs, ScopeKind::Resource, target),
            "{target} must be refused"
        );
        assert_eq!(
            format!("docs/resource/{target}").parse::<Scope>(),
            Err(ScopeError::UnsafeResource { shape, index }),
            "{target} as a pattern"
        );
    }
    // Still permitted: the shapes above are refused, not everything near them.
    for target in [
        "file:///handbook/a/b.md",
        "file:///handbook/",
        "file:///handbook/dir/",
        "file:///handbook/.hidden",
        "file:///handbook/...",
        "file:///handbook/a..b",
        "file:///handbook/a;v=1",
        "file:///handbook/caf%C3%A9.md",
        "file:///handbook/a%20b",
        "file:///handbook/q?url=https://x.test/y",
    ] {
        assert!(
            handbook.permits(&docs, ScopeKind::Resource, target),
            "{target} must be permitted"
        );
        format!("docs/resource/{target}").parse::<Scope>().unwrap();
    }
    // The authority's `//` is no empty segment, with or without a host.
    for pattern in [
        "docs/resource/https://docs.test/a/*",
        "docs/resource/repo://acme/app/*",
        "docs/resource/urn:isbn:0451450523",
    ] {
        scope(pattern);
    }
    assert_eq!(
        "docs/resource/file:////etc/*".parse::<Scope>(),
        Err(ScopeError::UnsafeResource {
            shape: UnsafeShape::EmptySegment,
            index: 7
        })
    );
    // A prefix may not end in a dot segment or half an escape either.
    for (pattern, shape) in [
        (
            "docs/resource/file:///handbook/..*",
            UnsafeShape::DotSegment,
        ),
        ("docs/resource/file:///handbook/.*", UnsafeShape::DotSegment),
        (
            "docs/resource/file:///handbook/%2*",
            UnsafeShape::MalformedEscape,
        ),
        (
            "docs/resource/file:///handbook//*",
            UnsafeShape::EmptySegment,
        ),
    ] {
        assert!(
            matches!(pattern.parse::<Scope>(), Err(ScopeError::UnsafeResource { shape: s, .. }) if s == shape),
            "{pattern}"
        );
    }
}

#[test]
fn covers_only_subsets() {
    let cases = [
        ("github/tool/get_pr", "github/tool/get_pr", true),
        ("github/tool/get_pr", "github/tool/get_pr2", false),
        ("github/tool/get_pr", "github/tool/get_*", false),
        ("github/tool/get_*", "github/tool/get_pr", true),
        ("github/tool/get_*", "github/tool/get_p*", true),
        ("github/tool/get_*", "github/tool/get_*", true),
        ("github/tool/get_*", "github/tool/*", false),
        ("github/tool/get_*", "github/tool/ge*", false),
        ("github/tool/*", "github/tool/get_*", true),
        ("github/tool/*", "github/prompt/get", false),
        ("github/tool/*", "gitlab/tool/get", false),
        (
            "docs/resource/file:///a/*",
            "docs/resource/file:///a/b",
            true,
        ),
        (
            "docs/resource/file:///a/*",
            "docs/resource/file:///a/b/*",
            true,
        ),
        // (`file:///a/../b` no longer parses: see the unsafe-shape test.)
        (
            "docs/resource/file:///a/*",
            "docs/resource/file:///ab/*",
            false,
        ),
        (
            "docs/resource/file:///a/b",
            "docs/resource/file:///a/*",
            false,
        ),
    ];
    for (have, want_scope, want) in cases {
        assert_eq!(
            scope(have).covers(&scope(want_scope)),
            want,
            "{have} ⊇ {want_scope}"
        );
    }
}

#[test]
fn scope_set_is_sorted_and_deduplicated() {
    let set: ScopeSet = [
        "github/tool/b",
        "docs/resource/x",
        "github/tool/b",
        "github/tool/a",
    ]
    .into_iter()
    .map(scope)
    .collect();
    let printed: Vec<String> = set.iter().map(ToString::to_string).collect();
    assert_eq!(
        printed,
        ["docs/resource/x", "github/tool/a", "github/tool/b"]
    );
    assert_eq!(set.len(), 3);
    assert!(set.permits(&server("github"), ScopeKind::Tool, "a"));
    assert!(!set.permits(&server("github"), ScopeKind::Tool, "c"));
    assert!(!ScopeSet::new().permits(&server("github"), ScopeKind::Tool, "a"));
}

#[test]
fn uncovered_lists_requested_scopes_outside_the_set() {
    let consented: ScopeSet = ["github/tool/get_*", "docs/resource/file:///handbook/*"]
        .into_iter()
        .map(scope)
        .collect();
    let requested: Vec<Scope> = [
        "github/tool/get_pr",
        "github/tool/merge_pr",
        "docs/resource/file:///handbook/a.md",
        "github/tool/*",
    ]
    .into_iter()
    .map(scope)
    .collect();
    let missing: Vec<String> = consented
        .uncovered(&requested)
        .into_iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(missing, ["github/tool/merge_pr", "github/tool/*"]);
    assert!(consented.uncovered(&requested[..1]).is_empty());
    assert!(consented.uncovered(&[]).is_empty());
}

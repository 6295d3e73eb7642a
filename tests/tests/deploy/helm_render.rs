//! A renderer for the small subset of Go templates the Tessera chart uses, so
//! the chart can be tested without a `helm` binary. It refuses anything else,
//! so a template that outgrows the subset fails the test instead of rendering
//! wrongly.
//!
//! Supported: text; `{{ PIPELINE }}` and `{{- … -}}` whitespace trimming;
//! `{{ if PIPELINE }} … {{ else }} … {{ end }}`; pipelines over `.Values.a.b`,
//! `.Release.Name`, `.Release.Namespace`, `.Chart.Name`, `.Chart.Version`,
//! `.Chart.AppVersion`, with `quote`, `toYaml X`, `toJson X`, `nindent N`, `indent N`.
//! Comments (`{{/* … */}}`) are dropped.

use serde_norway::Value;

/// What `.` holds.
pub struct Context {
    pub values: Value,
    pub release_name: String,
    pub release_namespace: String,
    pub chart: Value,
}

enum Node {
    Text(String),
    Action(String),
    If {
        cond: String,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// Renders `template` with `ctx`.
pub fn render(template: &str, ctx: &Context) -> Result<String, String> {
    let tokens = tokenize(template)?;
    let mut pos = 0;
    let (nodes, stop) = parse(&tokens, &mut pos)?;
    if let Some(s) = stop {
        return Err(format!("unexpected {{{{ {s} }}}}"));
    }
    let mut out = String::new();
    exec(&nodes, ctx, &mut out)?;
    Ok(out)
}

enum Token {
    Text(String),
    Action(String),
}

fn tokenize(src: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unclosed {{")?;
        let mut inner = &after[..end];
        let trim_before = inner.starts_with('-');
        if trim_before {
            inner = &inner[1..];
            text = text.trim_end();
        }
        trim_next = inner.ends_with('-');
        if trim_next {
            inner = &inner[..inner.len() - 1];
        }
        if !text.is_empty() {
            tokens.push(Token::Text(text.to_owned()));
        }
        let inner = inner.trim();
        if !(inner.starts_with("/*") && inner.ends_with("*/")) {
            tokens.push(Token::Action(inner.to_owned()));
        }
        rest = &after[end + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    if !text.is_empty() {
        tokens.push(Token::Text(text.to_owned()));
    }
    Ok(tokens)
}

/// Parses until `else`/`end` (returned) or the end of input.
fn parse(tokens: &[Token], pos: &mut usize) -> Result<(Vec<Node>, Option<String>), String> {
    let mut nodes = Vec::new();
    while *pos < tokens.len() {
        let t = &tokens[*pos];
        *pos += 1;
        match t {
            Token::Text(s) => nodes.push(Node::Text(s.clone())),
            Token::Action(a) if a == "else" || a == "end" => return Ok((nodes, Some(a.clone()))),
            Token::Action(a) if a.starts_with("if ") => {
                let cond = a[3..].trim().to_owned();
                let (then, stop) = parse(tokens, pos)?;
                let otherwise = match stop.as_deref() {
                    Some("end") => Vec::new(),
                    Some("else") => match parse(tokens, pos)? {
                        (o, Some(s)) if s == "end" => o,
                        _ => return Err("if/else without end".into()),
                    },
                    _ => return Err("if without end".into()),
                };
                nodes.push(Node::If {
                    cond,
                    then,
                    otherwise,
                });
            }
            Token::Action(a) => {
                let word = a.split_whitespace().next().unwrap_or("");
                if ["range", "with", "define", "template", "include", "block"].contains(&word) {
                    return Err(format!("unsupported action {{{{ {a} }}}}"));
                }
                nodes.push(Node::Action(a.clone()));
            }
        }
    }
    Ok((nodes, None))
}

fn exec(nodes: &[Node], ctx: &Context, out: &mut String) -> Result<(), String> {
    for n in nodes {
        match n {
            Node::Text(s) => out.push_str(s),
            Node::Action(a) => out.push_str(&to_text(&pipeline(a, ctx)?)),
            Node::If {
                cond,
                then,
                otherwise,
            } => {
                if truthy(&pipeline(cond, ctx)?) {
                    exec(then, ctx, out)?;
                } else {
                    exec(otherwise, ctx, out)?;
                }
            }
        }
    }
    Ok(())
}

fn pipeline(src: &str, ctx: &Context) -> Result<Value, String> {
    let mut stages = src.split('|').map(str::trim);
    let first = stages.next().ok_or("empty pipeline")?;
    let words: Vec<&str> = first.split_whitespace().collect();
    let mut v = match words.as_slice() {
        ["toYaml", arg] => Value::String(to_yaml(&lookup(arg, ctx)?)),
        // A JSON array of strings is also a TOML array (the gateway's stdio args).
        ["toJson", arg] => {
            Value::String(serde_json::to_string(&lookup(arg, ctx)?).map_err(|e| e.to_string())?)
        }
        [arg] => lookup(arg, ctx)?,
        _ => return Err(format!("unsupported expression {first:?}")),
    };
    for stage in stages {
        let words: Vec<&str> = stage.split_whitespace().collect();
        v = match words.as_slice() {
            ["quote"] => Value::String(quote(&to_text(&v))),
            ["nindent", n] => Value::String(format!("\n{}", indent(&to_text(&v), n)?)),
            ["indent", n] => Value::String(indent(&to_text(&v), n)?),
            _ => return Err(format!("unsupported function {stage:?}")),
        };
    }
    Ok(v)
}

fn lookup(path: &str, ctx: &Context) -> Result<Value, String> {
    let mut parts = path
        .strip_prefix('.')
        .ok_or_else(|| format!("unsupported operand {path:?}"))?
        .split('.');
    let root = parts.next().unwrap_or("");
    let mut v = match root {
        "Values" => ctx.values.clone(),
        "Chart" => ctx.chart.clone(),
        "Release" => {
            let field = parts.next().unwrap_or("");
            return match field {
                "Name" => Ok(Value::String(ctx.release_name.clone())),
                "Namespace" => Ok(Value::String(ctx.release_namespace.clone())),
                _ => Err(format!("unsupported .Release.{field}")),
            };
        }
        _ => return Err(format!("unsupported operand {path:?}")),
    };
    for p in parts {
        v = v.get(p).cloned().unwrap_or(Value::Null);
    }
    Ok(v)
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(_) => true,
    }
}

fn to_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => to_yaml(other),
    }
}

fn to_yaml(v: &Value) -> String {
    serde_norway::to_string(v)
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

/// Go's `%q` for the plain strings a chart quotes.
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

fn indent(s: &str, n: &str) -> Result<String, String> {
    let n: usize = n.parse().map_err(|_| format!("bad indent {n:?}"))?;
    let pad = " ".repeat(n);
    Ok(s.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n"))
}

#[test]
fn renderer_handles_the_subset_and_refuses_the_rest() {
    let ctx = Context {
        values: serde_norway::from_str("a: {b: x, n: 3, off: false, m: {k: v}}").unwrap(),
        release_name: "r".into(),
        release_namespace: "ns".into(),
        chart: Value::Null,
    };
    let got = render(
        "x: {{ .Values.a.b | quote }}\n{{- if .Values.a.off }}\nno\n{{- else }}\nn: {{ .Values.a.n }}\n{{- end }}\nm:\n  {{- toYaml .Values.a.m | nindent 2 }}\nns: {{ .Release.Namespace }}\n",
        &ctx,
    )
    .unwrap();
    assert_eq!(got, "x: \"x\"\nn: 3\nm:\n  k: v\nns: ns\n");
    assert!(render("{{ include \"x\" . }}", &ctx).is_err());
    assert!(render("{{ .Values.a | default 1 }}", &ctx).is_err());
    assert!(render("{{ if .Values.a }}x", &ctx).is_err());
}

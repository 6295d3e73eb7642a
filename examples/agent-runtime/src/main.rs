//! `tessera-example-agent-runtime`: begins a task, picks its SVID by hint, calls an MCP
//! server over mTLS after checking the server's SPIFFE ID, prints every result or denial,
//! and ends the task. With `--auth bearer` the task presents no certificate: it gets an
//! access token from the server's token endpoint with its JWT-SVID instead.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use tessera_example_agent_runtime::bearer::connect_task_bearer;
use tessera_example_agent_runtime::{
    McpConnection, TaskRequest, Workload, install_crypto_provider, measure_refusal_after_end,
    parse_arguments, svid_json, task_json, tls_config,
};

/// An example agent runtime: one task, a few MCP tool calls (over mTLS, or with a bearer
/// token from the server's token endpoint: --auth bearer), then EndTask.
#[derive(Debug, Parser)]
#[command(name = "tessera-example-agent-runtime", version)]
struct Args {
    /// The agent's workload socket (path or unix:///path).
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
    workload_socket: String,

    /// The MCP endpoint, e.g. https://127.0.0.1:8443/mcp.
    #[arg(long)]
    url: String,

    /// The MCP server's name: the task is for it, and it must present
    /// spiffe://<td>/mcp/<server>.
    #[arg(long, default_value = "github")]
    server: String,

    /// A scope to request (repeatable), e.g. github/tool/get_pull_request.
    #[arg(long = "scope", required = true)]
    scopes: Vec<String>,

    /// The human the task acts for.
    #[arg(long)]
    subject: String,

    /// Why the task runs.
    #[arg(long, default_value = "example task")]
    purpose: String,

    /// Task lifetime in seconds (0 = the agent's default).
    #[arg(long, default_value_t = 0)]
    lifetime_secs: u32,

    /// List the tools this task may use.
    #[arg(long)]
    list: bool,

    /// Call a tool: `--call NAME '{"arg":"value"}'` (repeatable, in order).
    #[arg(long = "call", num_args = 2, value_names = ["TOOL", "JSON"])]
    calls: Vec<String>,

    /// After EndTask, call this tool again on the still-open connection until it is
    /// refused, and print the time from EndTask to the refusal: `--after-end NAME JSON`.
    #[arg(long = "after-end", num_args = 2, value_names = ["TOOL", "JSON"])]
    after_end: Vec<String>,

    /// Do not end the task (it still ends when this process exits).
    #[arg(long)]
    no_end: bool,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,

    /// How the task proves itself to the server: `mtls` presents the task's X.509-SVID
    /// as the client certificate; `bearer` presents no certificate and sends an OAuth
    /// access token, obtained the MCP specification's way (the server's 401 names its
    /// metadata, the task's JWT-SVID is the private_key_jwt assertion at its token
    /// endpoint). The server must accept the method (its --accept).
    #[arg(long, value_enum, default_value_t = Auth::Mtls, env = "TESSERA_RUNTIME_AUTH")]
    auth: Auth,

    /// With --auth bearer: the scopes to ask the token for, space-separated (default:
    /// all of the task's). A call beyond them but within the task is answered 403
    /// insufficient_scope.
    #[arg(long, env = "TESSERA_RUNTIME_TOKEN_SCOPE")]
    token_scope: Option<String>,
}

/// How the task authenticates to the MCP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Auth {
    /// The task SVID as the TLS client certificate.
    Mtls,
    /// An OAuth access token from the server's token endpoint; no client certificate.
    Bearer,
}

struct Report {
    json: bool,
    doc: serde_json::Map<String, Value>,
}

impl Report {
    fn line(&self, s: impl AsRef<str>) {
        if !self.json {
            println!("{}", s.as_ref());
        }
    }
    fn set(&mut self, k: &str, v: Value) {
        self.doc.insert(k.to_owned(), v);
    }
    fn fail(mut self, stage: &str, msg: String, extra: Value) -> ExitCode {
        if self.json {
            self.set(
                "error",
                json!({"stage": stage, "message": msg, "detail": extra}),
            );
            println!("{}", Value::Object(self.doc));
        } else {
            eprintln!("error at {stage}: {msg}");
        }
        ExitCode::from(2)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    install_crypto_provider();
    let args = Args::parse();
    run(args).await
}

async fn run(args: Args) -> ExitCode {
    let mut r = Report {
        json: args.json,
        doc: serde_json::Map::new(),
    };
    let mut calls = Vec::new();
    for pair in args.calls.chunks(2) {
        match parse_arguments(&pair[1]) {
            Ok(a) => calls.push((pair[0].clone(), a)),
            Err(e) => return r.fail("arguments", format!("{e:#}"), Value::Null),
        }
    }
    let after_end = match args.after_end.chunks(2).next() {
        Some(pair) => match parse_arguments(&pair[1]) {
            Ok(a) => Some((pair[0].clone(), a)),
            Err(e) => return r.fail("arguments", format!("{e:#}"), Value::Null),
        },
        None => None,
    };

    let workload = match Workload::connect(&args.workload_socket).await {
        Ok(w) => w,
        Err(e) => return r.fail("connect", format!("{e:#}"), Value::Null),
    };

    // 1. Begin the task.
    let req = TaskRequest {
        server: args.server.clone(),
        scopes: args.scopes.clone(),
        subject: args.subject.clone(),
        purpose: args.purpose.clone(),
        lifetime_secs: args.lifetime_secs,
    };
    let task = match workload.begin_task(&req).await {
        Ok(t) => t,
        Err(s) => {
            return r.fail(
                "begin_task",
                format!("{:?}: {}", s.code(), s.message()),
                json!({"code": format!("{:?}", s.code())}),
            );
        }
    };
    r.set("task", task_json(&task));
    r.line(format!("task    {}", task.spiffe_id));
    r.line(format!(
        "        subject {}, purpose {:?}, scopes {}",
        task.subject,
        task.purpose,
        task.scopes.join(" ")
    ));

    let expected = format!(
        "spiffe://{}/mcp/{}",
        trust_domain_of(&task.spiffe_id),
        args.server
    );
    let conn = if args.auth == Auth::Bearer {
        // 2-3. No certificate: discovery from the 401, the task's JWT-SVID as the
        // assertion, an access token for exactly this URL, then MCP with it.
        match connect_task_bearer(
            &workload,
            &args.url,
            &task.spiffe_id,
            &args.server,
            args.token_scope.as_deref(),
        )
        .await
        {
            Ok((conn, token, discovery)) => {
                r.line(format!(
                    "token   from {} (issuer {}): scope {:?}, expires in {}s",
                    discovery.token_endpoint, discovery.issuer, token.scope, token.expires_in
                ));
                r.set(
                    "bearer",
                    json!({
                        "resource": discovery.resource,
                        "resource_metadata": discovery.resource_metadata,
                        "issuer": discovery.issuer,
                        "token_endpoint": discovery.token_endpoint,
                        "scope": token.scope,
                        "expires_in": token.expires_in,
                    }),
                );
                conn
            }
            Err(e) => return r.fail("bearer_token", format!("{e:#}"), Value::Null),
        }
    } else {
        // 2. Pick the task SVID from the Workload API stream by hint = task id.
        let cred = match workload
            .task_credential(&task.id, Duration::from_secs(5))
            .await
        {
            Ok(c) => c,
            Err(e) => return r.fail("task_svid", format!("{e:#}"), Value::Null),
        };
        let svid = svid_json(&cred);
        r.line(format!(
            "svid    {} (serial {}, expires in {}s)",
            cred.spiffe_id,
            svid["serial"].as_str().unwrap_or("?"),
            svid["not_after_unix"].as_i64().unwrap_or(0) - now_unix()
        ));
        r.set("svid", svid);

        // 3. mTLS to the server, which must be spiffe://<td>/mcp/<server>.
        let tls = match tls_config(&cred, &args.server) {
            Ok(t) => t,
            Err(e) => return r.fail("tls", format!("{e:#}"), Value::Null),
        };
        match McpConnection::connect(&args.url, tls).await {
            Ok(c) => c,
            Err(e) => return r.fail("connect_mcp", format!("{e:#}"), Value::Null),
        }
    };
    r.line(format!(
        "server  {expected} verified ({})",
        conn.server_info().unwrap_or_default()
    ));
    r.set("server", json!({"spiffe_id": expected, "url": args.url}));

    if args.list {
        match conn.list_tools().await {
            Ok(tools) => {
                r.line(format!("tools   {}", tools.join(", ")));
                r.set("tools", json!(tools));
            }
            Err(e) => return r.fail("tools/list", format!("{e:#}"), Value::Null),
        }
    }

    let mut results = Vec::new();
    for (tool, a) in &calls {
        let start = Instant::now();
        let outcome = conn.call(tool, a.clone()).await;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let shown = a.as_ref().map(|m| Value::Object(m.clone()).to_string());
        let mark = if outcome.is_ok() { "✔" } else { "✘" };
        r.line(format!(
            "{mark} call  {tool} {} → {outcome}",
            shown.as_deref().unwrap_or("{}")
        ));
        let mut v = serde_json::to_value(&outcome).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("tool".into(), json!(tool));
            m.insert("arguments".into(), json!(a));
            m.insert("latency_ms".into(), json!(ms));
        }
        results.push(v);
    }
    r.set("calls", Value::Array(results));

    // 4. End the task (and, on request, measure EndTask → refusal on the open connection).
    if let Some((tool, a)) = after_end {
        match measure_refusal_after_end(
            &workload,
            &conn,
            &task.id,
            &tool,
            a,
            Duration::from_secs(5),
        )
        .await
        {
            Ok(m) => {
                r.line(format!(
                    "ended   {} (EndTask took {:.1} ms)",
                    task.id,
                    ms(m.end_task_rtt)
                ));
                r.line(format!(
                    "✘ call  {tool} on the same connection → {} after {:.1} ms ({} attempt{})",
                    m.outcome,
                    ms(m.elapsed),
                    m.attempts,
                    if m.attempts == 1 { "" } else { "s" }
                ));
                r.set("ended", json!(true));
                let mut v = serde_json::to_value(&m.outcome).unwrap_or(Value::Null);
                if let Value::Object(o) = &mut v {
                    o.insert("tool".into(), json!(tool));
                    o.insert("refused_after_ms".into(), json!(ms(m.elapsed)));
                    o.insert("end_task_ms".into(), json!(ms(m.end_task_rtt)));
                    o.insert("attempts".into(), json!(m.attempts));
                }
                r.set("after_end", v);
            }
            Err(e) => return r.fail("after_end", format!("{e:#}"), Value::Null),
        }
    } else if !args.no_end {
        match workload.end_task(&task.id).await {
            Ok(_) => {
                r.line(format!("ended   {}", task.id));
                r.set("ended", json!(true));
            }
            Err(s) => return r.fail("end_task", s.message().to_owned(), Value::Null),
        }
    }
    conn.close().await;
    if r.json {
        println!("{}", Value::Object(r.doc));
    }
    ExitCode::SUCCESS
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `acme.corp` of `spiffe://acme.corp/client/...`.
fn trust_domain_of(spiffe_id: &str) -> &str {
    spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|s| s.split('/').next())
        .unwrap_or_default()
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

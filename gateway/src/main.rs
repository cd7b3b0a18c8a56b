//! The `gateway` command: serve a node, mint dev tokens, run the reference client.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use gateway::client::{Client, ClientError, TlsOptions};
use gateway::config::{Config, Overrides};
use gateway::protocol::{Code, Message};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(name = "gateway", version, about = "IM long-connection edge gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway node.
    Serve(ServeArgs),
    /// Mint a dev token (HS256) from the configured or generated secret.
    Token(TokenArgs),
    /// Reference client: log in, heartbeat, print pushes, send lines typed as `<uid> <text>`.
    Client(ClientArgs),
    /// Check a config file and print every problem.
    CheckConfig(ConfigArgs),
    /// Ban, unban and list bans through a node's admin API (docs/admin-api.md).
    Ban(BanArgs),
    /// Load generator: open many logged-in sessions and hold them (bounded).
    Load(LoadArgs),
    /// Push API benchmark: bounded number of pushes to uids held by `gateway load`.
    PushBench(PushBenchArgs),
    /// Inspect or remove the XDP program and maps pinned in bpffs (no running gateway needed).
    Xdp(XdpArgs),
    /// Check the kernel's SYN-flood and accept-queue settings against [host]; --apply sets them.
    Doctor(DoctorArgs),
}

#[derive(Args)]
struct DoctorArgs {
    /// Write the recommended value of every setting that is off (needs root; per network namespace).
    #[arg(long)]
    apply: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct XdpArgs {
    #[command(subcommand)]
    action: XdpAction,
}

#[derive(Args)]
struct XdpOpts {
    /// Pin folder; default: xdp.pin_dir from the config, else /sys/fs/bpf/im-gateway/<node-id>.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Subcommand)]
enum XdpAction {
    /// Links, ban count and verdict counters from the pinned maps.
    Stats(XdpOpts),
    /// Detach the pinned program and remove the pins: the kernel stops enforcing.
    Detach(XdpOpts),
}

#[derive(Args)]
struct PushBenchArgs {
    #[arg(long, default_value = "http://127.0.0.1:7080")]
    api: String,
    /// Target uids are <prefix><i> for i in 0..uids (as logged in by `gateway load`).
    #[arg(long, default_value = "load-")]
    prefix: String,
    #[arg(long, default_value_t = 1000)]
    uids: u64,
    #[arg(long, default_value_t = 1)]
    uids_per_push: usize,
    /// Total pushes (at most 10,000,000).
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long)]
    wait_ack: bool,
}

#[derive(Args)]
struct LoadArgs {
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    /// CA certificate to trust; default <state_dir>/dev-cert.pem.
    #[arg(long, conflicts_with = "plaintext")]
    ca: Option<PathBuf>,
    #[arg(long)]
    plaintext: bool,
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Number of sessions (one process holds at most `ulimit -n`).
    #[arg(long, default_value_t = 1000)]
    conns: u64,
    /// First uid index; uids are <prefix><index>.
    #[arg(long, default_value_t = 0)]
    first: u64,
    #[arg(long, default_value = "load-")]
    prefix: String,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// How long to hold the sessions after the last login (e.g. 30s). At most 1h.
    #[arg(long, default_value = "10s")]
    hold: String,
    /// Heartbeat interval while holding (default: none during the hold).
    #[arg(long)]
    heartbeat: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

/// The keys that change per host; each also reads a `GATEWAY_*` variable.
#[derive(Args, Clone)]
struct ConfigArgs {
    /// TOML config file (built-in defaults when omitted).
    #[arg(long, short, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// TLS listen address (listen.addr).
    #[arg(long, env = "GATEWAY_LISTEN")]
    listen: Option<String>,
    /// Node id (node.id); default: the host name.
    #[arg(long, env = "GATEWAY_NODE_ID")]
    node_id: Option<String>,
    /// Comma-separated etcd endpoints (cluster.etcd_endpoints).
    #[arg(long, env = "GATEWAY_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Option<Vec<String>>,
    /// Push API listen address (push_api.listen).
    #[arg(long, env = "GATEWAY_PUSH_LISTEN")]
    push_listen: Option<String>,
    /// State directory (node.state_dir): dev certificate and dev secret.
    #[arg(long, env = "GATEWAY_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Admin API listen address (admin.listen).
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Admin API tokens as comma-separated `name:token` pairs (admin.tokens).
    #[arg(long, env = "GATEWAY_ADMIN_TOKENS", value_delimiter = ',', hide_env_values = true)]
    admin_tokens: Option<Vec<String>>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let o = Overrides {
            listen: self.listen.clone(),
            node_id: self.node_id.clone(),
            etcd_endpoints: self.etcd_endpoints.clone(),
            push_listen: self.push_listen.clone(),
            state_dir: self.state_dir.clone(),
            admin_tokens: self.admin_tokens.clone(),
            admin_listen: self.admin_listen.clone(),
        };
        Ok(Config::load(self.config.as_deref(), &o)?)
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct TokenArgs {
    #[arg(long)]
    uid: String,
    #[arg(long)]
    device: Option<String>,
    /// Lifetime, e.g. 1h, 30m, 7d.
    #[arg(long, default_value = "1h")]
    ttl: String,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct ClientArgs {
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    /// CA certificate to trust (the dev certificate: <state_dir>/dev-cert.pem).
    #[arg(long, conflicts_with = "plaintext")]
    ca: Option<PathBuf>,
    /// Name to verify in the server certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Connect without TLS (only to a listen.plaintext_addr listener).
    #[arg(long)]
    plaintext: bool,
    /// Token to log in with; or give --uid and let the client mint one from the secret.
    #[arg(long, env = "GATEWAY_TOKEN")]
    token: Option<String>,
    #[arg(long)]
    uid: Option<String>,
    #[arg(long)]
    device: Option<String>,
    /// Don't acknowledge pushes (to watch push API `wait_ack` time out).
    #[arg(long)]
    no_ack: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve(a) => serve(a).await,
            Command::Token(a) => token(a),
            Command::Client(a) => client(a).await,
            Command::CheckConfig(a) => a.load().map(|_| println!("configuration OK")),
            Command::Load(a) => load(a).await,
            Command::PushBench(a) => push_bench(a).await,
            Command::Xdp(a) => xdp(a),
            Command::Doctor(a) => doctor(a),
            Command::Ban(a) => ban(a).await,
        }
    });
    // Don't wait for blocking helpers (the client's stdin reader) to finish.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping a cause whose text the message already
/// carries (our error types print their source inline, which `{:#}` would
/// repeat).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let config = a.config.load()?;
    init_logging(&config.log.level, config.log.json);
    let gw = gateway::server::start(config).await.context("starting the gateway")?;
    if let Some(ca) = &gw.dev_ca_file {
        eprintln!("dev certificate (trust this in clients): {}", ca.display());
    }
    match gw.admin_addr {
        Some(admin) => {
            eprintln!("listening: tls={} push_api=http://{} admin_api=http://{admin}", gw.addr, gw.push_api_addr)
        }
        None => eprintln!("listening: tls={} push_api=http://{}", gw.addr, gw.push_api_addr),
    }
    wait_for_signal().await?;
    tracing::info!("signal received, shutting down");
    gw.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// TLS settings for the client-side commands: trust `ca`, else the dev certificate.
fn client_tls(
    plaintext: bool,
    ca: Option<&std::path::Path>,
    server_name: &str,
    cfg: &ConfigArgs,
) -> anyhow::Result<Option<TlsOptions>> {
    if plaintext {
        return Ok(None);
    }
    let ca = match ca {
        Some(c) => c.to_path_buf(),
        None => cfg.load()?.node.state_dir.join(gateway::state::DEV_CERT_FILE),
    };
    let opts =
        TlsOptions::from_ca_file(&ca, server_name).with_context(|| format!("loading CA file {}", ca.display()))?;
    Ok(Some(opts))
}

fn secret_for(cfg: &ConfigArgs) -> anyhow::Result<Vec<u8>> {
    let config = cfg.load()?;
    let resolved = gateway::state::resolve_secret(&config.auth, &config.node.state_dir)?;
    match resolved {
        Some((secret, _)) => Ok(secret),
        None => bail!(
            "auth.algorithm is not HS256: tokens for RS256/ES256 are minted by your login service, not the gateway"
        ),
    }
}

fn token(a: TokenArgs) -> anyhow::Result<()> {
    let config = a.config.load()?;
    // The same checks login applies, so a minted token is never refused as bad_identity.
    gateway::auth::check_id(&a.uid, config.session.max_uid_bytes).map_err(|e| anyhow::anyhow!("--uid: {e}"))?;
    if let Some(d) = &a.device {
        gateway::auth::check_id(d, gateway::auth::MAX_DEVICE_BYTES).map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    }
    let ttl = gateway::config::parse_duration(&a.ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(366 * 24 * 3600) {
        bail!("--ttl: between 1s and 366d (a token that is already expired, or lives for years, is a mistake)");
    }
    let secret = secret_for(&a.config)?;
    let t = gateway::auth::mint_hs256(&secret, &a.uid, a.device.as_deref(), ttl)?;
    println!("{t}");
    Ok(())
}

async fn client(a: ClientArgs) -> anyhow::Result<()> {
    let token = match (&a.token, &a.uid) {
        (Some(t), _) => t.clone(),
        (None, Some(uid)) => {
            gateway::auth::mint_hs256(&secret_for(&a.config)?, uid, a.device.as_deref(), Duration::from_secs(3600))?
        }
        (None, None) => bail!("give --token, or --uid to mint a dev token from the configured secret"),
    };
    let tls = client_tls(a.plaintext, a.ca.as_deref(), &a.server_name, &a.config)?;
    let mut c = Client::connect(a.addr, tls.as_ref()).await?;
    let info = c.login(&token).await.map_err(explain)?;
    eprintln!(
        "logged in to node {} as session {} (heartbeat every {}s). Type `<uid> <message>` to send.",
        info.node_id,
        info.session_id,
        info.heartbeat.as_secs()
    );
    let mut beat = tokio::time::interval(info.heartbeat);
    beat.tick().await;
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = beat.tick() => { c.heartbeat().await?; }
            line = stdin.next_line(), if stdin_open => match line? {
                None => stdin_open = false,
                Some(l) => {
                    let l = l.trim();
                    if l.is_empty() { continue; }
                    let (to, text) = l.split_once(' ').unwrap_or((l, ""));
                    let seq = c.send(Message::Send { to: to.to_string(), payload: text.as_bytes().to_vec().into() }).await?;
                    eprintln!("sent seq {seq} to {to}");
                }
            },
            msg = c.recv() => {
                let (seq, msg) = msg.map_err(explain)?;
                match msg {
                    Message::Push { push_id, from, payload } => {
                        let who = if from.is_empty() { "business" } else { from.as_str() };
                        println!("PUSH {push_id} from {who}: {}", String::from_utf8_lossy(&payload));
                        let _ = std::io::stdout().flush();
                        if !a.no_ack { c.send(Message::PushAck { push_id }).await?; }
                    }
                    Message::SendAck { code, message, .. } => {
                        let name = Code::from_u16(code).map_or("unknown", Code::name);
                        eprintln!("SEND_ACK seq {seq}: {code} {name} {message}");
                    }
                    Message::HeartbeatAck => {}
                    Message::Kick { code, message } => bail!(ClientError::Kicked { code, message }),
                    Message::Error { code, message } => bail!(ClientError::Refused { code, message }),
                    Message::Close { code, message } => {
                        let name = Code::from_u16(code).map_or("unknown", Code::name);
                        eprintln!("server closed the session: {code} {name} {message}");
                        return Ok(());
                    }
                    Message::Migrate { delay_ms, targets } => {
                        eprintln!("server asks to migrate to {targets:?} after {delay_ms} ms");
                    }
                    other => eprintln!("unexpected {} from the server", other.op().name()),
                }
            }
        }
    }
}

async fn load(a: LoadArgs) -> anyhow::Result<()> {
    let hold = gateway::config::parse_duration(&a.hold).map_err(|e| anyhow::anyhow!("--hold: {e}"))?;
    if hold > Duration::from_secs(3600) {
        bail!("--hold: at most 1h (load runs are bounded)");
    }
    let heartbeat = match &a.heartbeat {
        Some(h) => Some(gateway::config::parse_duration(h).map_err(|e| anyhow::anyhow!("--heartbeat: {e}"))?),
        None => None,
    };
    let tls = client_tls(a.plaintext, a.ca.as_deref(), &a.server_name, &a.config)?;
    let plan = gateway::load::LoadPlan {
        addr: a.addr,
        tls,
        secret: secret_for(&a.config)?,
        uid_prefix: a.prefix,
        first: a.first,
        conns: a.conns,
        concurrency: a.concurrency,
        hold,
        heartbeat,
    };
    let report = gateway::load::run(plan, |r| {
        // One machine-readable line when every login finished: benchmarks sample the server then.
        println!(
            "{{\"event\":\"ready\",\"logged_in\":{},\"failed\":{},\"login_secs\":{:.3},\"logins_per_sec\":{:.1}}}",
            r.logged_in,
            r.failed,
            r.login_elapsed.as_secs_f64(),
            r.logins_per_sec()
        );
        let _ = std::io::stdout().flush();
    })
    .await;
    println!(
        "{{\"event\":\"done\",\"logged_in\":{},\"failed\":{},\"pushes_received\":{}}}",
        report.logged_in, report.failed, report.pushes_received
    );
    Ok(())
}

async fn push_bench(a: PushBenchArgs) -> anyhow::Result<()> {
    if a.requests > 10_000_000 || a.uids == 0 || a.uids_per_push == 0 {
        bail!("--requests at most 10,000,000; --uids and --uids-per-push at least 1");
    }
    let uids: Vec<String> = (0..a.uids).map(|i| format!("{}{i}", a.prefix)).collect();
    let r = gateway::load::push_bench(&a.api, &uids, a.uids_per_push, a.requests, a.concurrency, a.wait_ack).await?;
    println!(
        "{{\"event\":\"push_bench\",\"requests\":{},\"complete\":{},\"per_sec\":{:.1},\"deliveries_per_sec\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        r.requests,
        r.complete,
        r.per_sec(),
        r.per_sec() * a.uids_per_push as f64,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
        r.max.as_secs_f64() * 1e3
    );
    Ok(())
}

fn doctor(a: DoctorArgs) -> anyhow::Result<()> {
    let config = a.config.load()?;
    let findings =
        gateway::doctor::run(gateway::doctor::recommendations(&config), std::path::Path::new("/proc/sys"), a.apply);
    print!("{}", gateway::doctor::render(&findings));
    let bad = findings.iter().filter(|f| !f.passed()).count();
    if bad > 0 {
        bail!(
            "{bad} setting(s) differ from the recommendation (see docs/operations.md, \"Accept queue and SYN floods\")"
        );
    }
    Ok(())
}

fn xdp(a: XdpArgs) -> anyhow::Result<()> {
    use gateway::defense::{pins, Defense};
    let (XdpAction::Stats(opts) | XdpAction::Detach(opts)) = &a.action;
    let dir = match &opts.pin_dir {
        Some(d) => d.clone(),
        None => {
            let config = opts.config.load()?;
            config.xdp.pin_dir.unwrap_or_else(|| pins::default_dir(&config.node.id))
        }
    };
    if !dir.exists() {
        anyhow::bail!(
            "nothing is pinned in {} (pinning needs xdp.pin = true on a gateway that loaded XDP)",
            dir.display()
        );
    }
    match a.action {
        XdpAction::Stats(_) => {
            let s = Defense::pinned_status(&dir).with_context(|| format!("reading pins in {}", dir.display()))?;
            println!("pin dir: {}", dir.display());
            if s.links.is_empty() {
                println!("links: none (the program is not attached through these pins)");
            }
            for (iface, mode) in &s.links {
                println!("link: {iface} ({mode})");
            }
            println!("exact bans in the kernel: {}", s.exact_bans);
            for (name, v) in &s.counters {
                println!("{name:<28} {v}");
            }
        }
        XdpAction::Detach(_) => {
            let removed =
                Defense::detach_pinned(&dir).with_context(|| format!("detaching pins in {}", dir.display()))?;
            if removed.is_empty() {
                println!("nothing pinned in {}", dir.display());
            }
            for p in removed {
                println!("removed {}", p.display());
            }
        }
    }
    Ok(())
}

fn explain(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Closed => anyhow::anyhow!("the server closed the connection"),
        other => other.into(),
    }
}

#[derive(Args)]
struct BanArgs {
    /// The admin API of any node (bans are shared through etcd when configured).
    #[arg(long, env = "GATEWAY_ADMIN_URL", default_value = "http://127.0.0.1:7081", global = true)]
    admin_url: String,
    /// Your token (one of admin.tokens); the audit log records its name.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    action: BanAction,
}

#[derive(Subcommand)]
enum BanAction {
    /// Ban addresses, networks (CIDR) or users (`uid:<uid>`).
    Add {
        #[arg(required = true)]
        targets: Vec<String>,
        /// Why: shown to kicked users and kept in the audit log.
        #[arg(long)]
        reason: String,
        /// How long, e.g. 30m, 12h, 7d (default: until removed).
        #[arg(long, conflicts_with = "until")]
        ttl: Option<String>,
        /// When it ends, RFC 3339 (e.g. 2030-01-02T03:04:05Z).
        #[arg(long)]
        until: Option<String>,
        /// Count matches but let them through.
        #[arg(long)]
        monitor: bool,
        /// Allow a /0 (every address).
        #[arg(long)]
        force: bool,
    },
    /// Lift bans.
    Rm {
        #[arg(required = true)]
        targets: Vec<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// List bans.
    Ls {
        /// Substring of target, reason or author.
        #[arg(long)]
        q: Option<String>,
        /// `ip` or `uid`.
        #[arg(long)]
        kind: Option<String>,
        /// Exact author, e.g. `detector:conn_rate`.
        #[arg(long)]
        by: Option<String>,
        /// Only bans covering this address.
        #[arg(long)]
        ip: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

async fn ban(a: BanArgs) -> anyhow::Result<()> {
    let base = a.admin_url.trim_end_matches('/').to_string();
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build().context("building the HTTP client")?;
    let auth = |r: reqwest::RequestBuilder| match &a.token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    // The API answers errors as {"error": "..."}: show that, not a status line.
    async fn answer(r: reqwest::Response) -> anyhow::Result<serde_json::Value> {
        let status = r.status();
        let v: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            let msg = v["error"].as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
                " (pass --token or set GATEWAY_ADMIN_TOKEN)"
            } else {
                ""
            };
            bail!("{status}: {msg}{hint}");
        }
        Ok(v)
    }
    let send = |r: reqwest::RequestBuilder| {
        let base = base.clone();
        async move { r.send().await.with_context(|| format!("calling the admin API at {base}")) }
    };
    match a.action {
        BanAction::Add { targets, reason, ttl, until, monitor, force } => {
            let mode = if monitor { "monitor" } else { "enforce" };
            let bans: Vec<serde_json::Value> = targets
                .iter()
                .map(|t| serde_json::json!({ "target": t, "reason": reason, "ttl": ttl, "until": until, "mode": mode, "force": force }))
                .collect();
            let v = answer(
                send(auth(
                    http.post(format!("{}/v1/bans/bulk", a.admin_url.trim_end_matches('/')))
                        .json(&serde_json::json!({ "bans": bans })),
                ))
                .await?,
            )
            .await?;
            println!("added {}, replaced {}", v["added"], v["replaced"]);
        }
        BanAction::Rm { targets, reason } => {
            for t in targets {
                let mut r = http.delete(format!("{}/v1/bans/{t}", a.admin_url.trim_end_matches('/')));
                if let Some(reason) = &reason {
                    r = r.query(&[("reason", reason)]);
                }
                answer(send(auth(r)).await?).await.with_context(|| format!("removing {t}"))?;
                println!("removed {t}");
            }
        }
        BanAction::Ls { q, kind, by, ip, json } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            for (k, v) in [("q", q), ("kind", kind), ("by", by), ("ip", ip)] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            let v = answer(
                send(auth(http.get(format!("{}/v1/bans", a.admin_url.trim_end_matches('/'))).query(&query))).await?,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("{:<40} {:<8} {:<25} {:<20} REASON", "TARGET", "MODE", "UNTIL", "BY");
            for b in v["bans"].as_array().into_iter().flatten() {
                let s = |k: &str| b[k].as_str().unwrap_or("-").to_string();
                println!("{:<40} {:<8} {:<25} {:<20} {}", s("target"), s("mode"), s("until"), s("by"), s("reason"));
            }
            eprintln!("{} of {} bans", v["matched"], v["total"]);
        }
    }
    Ok(())
}

//! Setting up: `sgw init` writes a gateway's and a client's files, `sgw enroll` prints the
//! string that joins an on-prem host, `sgw config check` validates either config.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{self, AnyConfig};
use crate::daemon::{gateway, load_acl, Error};
use crate::init::{self, Expose, InitOptions};

/// `sgw init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    pub dir: PathBuf,
    /// Tunnel endpoint address.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: String,
    /// A name or address clients reach the gateway by (repeatable): all go into the
    /// certificate; the first is the URL clients dial.
    #[arg(long)]
    pub public: Vec<String>,
    /// Where the management API keeps what it creates (default: state.json beside
    /// gateway.toml; /var/lib/sgw/state.json for /etc/sgw).
    #[arg(long)]
    pub state_file: Option<String>,
    /// Expose an on-prem service: HOST:PORT[@CLOUD_PORT].
    #[arg(long)]
    pub expose: Vec<Expose>,
}

pub fn init(args: InitArgs) -> Result<ExitCode, Error> {
    let opts = InitOptions {
        listen: args.listen,
        public: args.public,
        state_file: args.state_file,
        expose: args.expose,
        ..InitOptions::default()
    };
    let w = init::write(&args.dir, &opts).map_err(Error::input)?;
    print!("{}", init::summary(&w, &opts));
    Ok(ExitCode::SUCCESS)
}

/// `sgw enroll`.
#[derive(Debug, clap::Args)]
pub struct EnrollArgs {
    pub gateway_id: String,
    #[arg(long, env = "SGW_GATEWAY_CONFIG")]
    pub config: PathBuf,
    /// The URL clients dial (default: public_url in gateway.toml).
    #[arg(long)]
    pub url: Option<String>,
    /// Also write the string to this file (mode 0600).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn enroll(args: EnrollArgs) -> Result<ExitCode, Error> {
    let g = gateway::load(&args.config)?;
    let s =
        crate::enroll::for_gateway(&g.config, &g.managed, &args.gateway_id, args.url.as_deref())
            .map_err(Error::input)?;
    if let Some(out) = &args.out {
        crate::fsutil::write_private(out, format!("{s}\n").as_bytes())
            .map_err(Error::io(format!("writing {}", out.display())))?;
        eprintln!("wrote {} (mode 0600)", out.display());
    }
    eprintln!("On the on-prem host, as root: sgw client --enroll - --dir /etc/sgw --write-only");
    eprintln!("and paste this line (it holds the gateway's token: hand it over like a password):");
    println!("{s}");
    Ok(ExitCode::SUCCESS)
}

/// `sgw config check FILE`: every error with its file, line and path (exit 2).
pub fn check_config(file: PathBuf) -> Result<ExitCode, Error> {
    match config::load_any(&file).map_err(Error::input)? {
        AnyConfig::Client(c) => {
            load_acl(&c.acl_file, c.default_policy)?;
            for w in c.warnings(&file) {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok (client config, {} gateway(s))",
                file.display(),
                c.gateways.len()
            );
        }
        AnyConfig::Gateway(g) => {
            crate::gateway::check(&g).map_err(|e| Error::findings(e.0))?;
            // The state file is part of what the gateway would start with.
            let loaded = gateway::with_state(*g)?;
            let ids = &loaded.config.gateways;
            let n: usize = ids.iter().map(|t| t.destinations.len()).sum();
            let kept = match loaded
                .config
                .api
                .as_ref()
                .and_then(|a| a.state_store.as_ref())
            {
                Some(pg) => format!(
                    "the API's gateways are in state_store {} (read at start)",
                    pg.url
                ),
                None => format!("{} from state_file", loaded.state.gateways.len()),
            };
            println!(
                "{}: ok (gateway config, {} gateway id(s), {n} destination(s); {kept})",
                file.display(),
                ids.len(),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! The `perch` command line: `perch serve`, and client subcommands that
//! talk to the admin API (`PERCH_URL`, `PERCH_TOKEN`).
use std::process::ExitCode;

use clap::Parser;

mod args;
pub mod client;
mod commands;
mod ops;
mod output;
pub mod scaffold;

pub use args::Cli;
use args::{Command, CompileArgs, NewArgs, RestoreArgs, ServeArgs};

use crate::config::{Config, Overrides};
use crate::server::{AdminToken, serve};

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => run_serve(args),
        Command::Compile(args) => run_compile(args),
        Command::New(args) => run_new(args),
        Command::Restore(args) => run_restore(args),
        Command::Storage {
            action: args::StorageAction::Migrate { from, to, ca_file },
        } => run_migrate(&from, &to, ca_file.as_deref()),
        other => match commands::run_client(other) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run_new(args: NewArgs) -> ExitCode {
    match scaffold::create(&args.name, args.dir.as_deref(), args.sdk_path.as_deref()) {
        Ok(dir) => {
            println!("created {}", dir.display());
            println!("next: cd {} && cargo build --release", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_restore(args: RestoreArgs) -> ExitCode {
    let key = match &args.secret_key_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|text| {
                crate::secrets::SecretBox::parse(&text, &path.display().to_string())
                    .map(|b| (b, Some(text)))
            }),
        None => match std::env::var("PERCH_SECRET_KEY") {
            Ok(k) if !k.is_empty() => {
                crate::secrets::SecretBox::parse(&k, "PERCH_SECRET_KEY").map(|b| (b, None))
            }
            _ => Err("the backup's secrets need the key of the node it was taken on: set PERCH_SECRET_KEY, or pass --secret-key-file with that node's secret.key".into()),
        },
    };
    let result = key.and_then(|(secrets, file)| {
        let restored = crate::backup::restore(&args.from, &args.data_dir, &secrets)?;
        if let Some(text) = file {
            let path = args.data_dir.join("secret.key");
            crate::secrets::write_private_file(&path, text.trim().as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(restored)
    });
    match result {
        Ok(r) => {
            println!(
                "restored {} (revision {}, {} files, {} functions) into {}",
                args.from.display(),
                r.manifest.revision,
                r.manifest.files.len(),
                r.functions,
                args.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_migrate(from: &std::path::Path, to: &str, ca_file: Option<&std::path::Path>) -> ExitCode {
    if let Err(e) = to.parse::<perch_pg::postgres::Config>() {
        eprintln!("error: --to is not a PostgreSQL connection string: {e}");
        return ExitCode::FAILURE;
    }
    let mut pg = perch_pg::PgConfig::new(to);
    if let Some(ca) = ca_file
        && let Err(e) = pg.verify_with(ca)
    {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let key = std::env::var("PERCH_SECRET_KEY").ok();
    match crate::migrate::migrate(from, &pg, key.as_deref()) {
        Ok(m) => {
            println!(
                "migrated {}: {} registry records ({} versions; sha256 {}), {} KV namespaces with {} keys (sha256 {}), {} components ({} bytes), {} image archives ({} bytes), {} audit entries (sha256 {}), usage of {} tenants; all read back the same",
                from.display(),
                m.records,
                m.versions,
                m.registry_sha256,
                m.namespaces,
                m.keys,
                m.kv_sha256,
                m.components,
                m.component_bytes,
                m.images,
                m.image_bytes,
                m.audit_entries,
                m.audit_sha256,
                m.usage_tenants
            );
            if key.is_none() {
                println!(
                    "start the cluster's nodes with PERCH_SECRET_KEY set to the contents of {}",
                    from.join("secret.key").display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_compile(args: CompileArgs) -> ExitCode {
    let settings = perch_runtime::EngineSettings {
        max_wasm_stack: args.max_wasm_stack,
    };
    match perch_runtime::compile_child(&settings, &args.engine_tag, &args.input, &args.output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The server reads only this line as the reason (bounded).
            eprintln!("{}", e.report_line());
            ExitCode::from(e.exit_code())
        }
    }
}

fn run_serve(args: ServeArgs) -> ExitCode {
    crate::telemetry::init_tracing();
    let overrides = Overrides {
        data_dir: args.data_dir,
        listen: args.listen,
        admin_listen: args.admin_listen,
        tls_listen: args.tls_listen,
        storage_url: args.storage_url,
        storage_ca_file: args.storage_ca_file,
    };
    let config = match Config::load(args.config.as_deref(), overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let admin_token = std::env::var("PERCH_ADMIN_TOKEN").ok();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let summary = config.clone();
    let result = rt.block_on(serve(config, admin_token, move |s| {
        let l = &summary.limits;
        match &s.admin_token {
            AdminToken::FromEnv => eprintln!("admin token: from PERCH_ADMIN_TOKEN"),
            AdminToken::File(p) => eprintln!("admin token: {}", p.display()),
        }
        eprintln!(
            "data dir: {}  limits: memory={}MiB cpu={}ms wall={}ms  tenant concurrency: {}",
            summary.data_dir.display(),
            l.memory_mb,
            l.cpu_ms,
            l.wall_ms,
            summary.tenant_concurrency
        );
        match s.tls {
            Some(tls) => println!(
                "perch listening data=http://{} admin=http://{} tls=https://{tls}",
                s.data, s.admin
            ),
            None => println!(
                "perch listening data=http://{} admin=http://{}",
                s.data, s.admin
            ),
        }
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

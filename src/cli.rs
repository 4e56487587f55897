//! Runs a parsed command line. Errors here carry context for the operator (anyhow).
use anyhow::Result;

use crate::config::{Cli, Command};

pub fn run(cli: Cli) -> Result<()> {
    if let Command::Serve(cfg) = cli.command {
        return crate::app::serve(*cfg, cli.log_format);
    }
    crate::telemetry::init(cli.log_format);
    match cli.command {
        Command::Generate(args) => generate(&args),
        Command::Train(args) if args.drift_reference_only => drift_reference(&args),
        Command::Train(args) => train(&args),
        Command::Serve(_) => unreachable!("served above"),
        Command::Score(args) => score(&args),
        Command::Bench(args) => crate::bench::run(args),
        Command::Migrate(args) => crate::decision_log::run_migrate_command(&args),
        Command::Report(args) => report(&args),
        Command::Keys(args) => keys(&args),
        Command::Import(args) => import(&args),
        Command::Drift(args) => crate::drift::run(&args),
    }
}

/// `cra keys add|list|revoke`: the key goes to stdout, alone on its line, so that a script can
/// take it; everything else to stderr.
fn keys(args: &crate::config::KeysArgs) -> Result<()> {
    use crate::{config::KeysAction, security::keys};
    let path = &args.api_keys;
    match &args.action {
        KeysAction::Add {
            client,
            rate,
            burst,
        } => {
            let key = keys::add(path, client, *rate, *burst)?;
            println!("{key}");
            eprintln!(
                "added a key for {client} to {}; it is shown this once: give it to the client                  (header `authorization: Bearer KEY`)",
                path.display()
            );
        }
        KeysAction::List => print!("{}", keys::list(path)?),
        KeysAction::Revoke { client, key } => {
            let n = keys::revoke(path, client, key.as_deref())?;
            eprintln!(
                "revoked {n} key(s) of {client} in {}; a server watching the file refuses them from now on",
                path.display()
            );
        }
    }
    Ok(())
}

/// `cra import`: reads the booster and the spec, writes the verified bundle, says what it wrote.
fn import(args: &crate::config::ImportArgs) -> Result<()> {
    use anyhow::Context;
    use cra_model::import::{import_bundle, BoosterFormat, ImportSpec};
    let booster = std::fs::read(&args.booster)
        .with_context(|| format!("reading the booster {}", args.booster.display()))?;
    let spec_bytes = std::fs::read(&args.preprocessing).with_context(|| {
        format!(
            "reading the preprocessing spec {}",
            args.preprocessing.display()
        )
    })?;
    let spec: ImportSpec = serde_json::from_slice(&spec_bytes).with_context(|| {
        format!(
            "{} is not a preprocessing spec (format_version, preprocessor, canary, ...)",
            args.preprocessing.display()
        )
    })?;
    let reason_codes = match &args.reason_codes {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading the reason codes {}", path.display()))?;
            Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a reason-code table", path.display()))?,
            )
        }
        None => None,
    };
    let bundle = import_bundle(
        &booster,
        BoosterFormat::of_path(&args.booster),
        &spec,
        reason_codes.as_ref(),
        &args.out,
    )
    .with_context(|| {
        format!(
            "importing {} into {}",
            args.booster.display(),
            args.out.display()
        )
    })?;
    println!(
        "imported {} ({} trees, XGBoost {}) -> {}: {} canary rows reproduced to 1e-6",
        bundle.version(),
        bundle.num_trees(),
        bundle.manifest.xgboost_version,
        args.out.display(),
        bundle.manifest.canary.rows.len()
    );
    Ok(())
}

/// `cra report`: writes the HTML report and says where.
fn report(args: &crate::config::ReportArgs) -> Result<()> {
    let s = crate::report::run(args)?;
    println!(
        "report on {} rows -> {} ({} KB) in {:.1}s",
        s.rows,
        s.path.display(),
        s.bytes.div_ceil(1024),
        s.seconds
    );
    Ok(())
}

/// `cra generate`: synthetic applications into Parquet or CSV.
fn generate(args: &crate::config::GenerateArgs) -> Result<()> {
    use crate::data::parquet;
    use anyhow::Context;
    use cra_model::synthetic as generator;
    let params = generator::GeneratorParams {
        rows: args.rows,
        seed: args.seed,
        noise_scale: args.noise_scale,
        no_bureau_share: args.no_bureau_share,
        ..Default::default()
    };
    let data = generator::generate(&params)?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if args.csv {
        parquet::write_csv(&data, &args.out)?;
    } else {
        parquet::write_parquet(&data, &args.out)?;
    }
    let no_file = data.rows.iter().filter(|r| r.credit_score.is_nan()).count();
    println!(
        "generated {} rows (seed {}) -> {}: default rate {:.2}%, {} without a bureau file",
        data.len(),
        args.seed,
        args.out.display(),
        100.0 * data.default_rate(),
        no_file
    );
    Ok(())
}

/// `cra train --drift-reference-only`: the drift reference of an existing bundle.
fn drift_reference(args: &crate::config::TrainArgs) -> Result<()> {
    let r = crate::training::reference::add_reference(&args.data, &args.out)?;
    println!(
        "drift reference of {} -> {}: features of {} training rows, score of {} test rows; checksums updated, the booster unchanged",
        r.bundle.version(),
        args.out
            .join(cra_model::bundle::DRIFT_REFERENCE_FILE)
            .display(),
        r.feature_rows,
        r.score_rows
    );
    Ok(())
}

/// `cra train` in a build without the trainer.
#[cfg(not(feature = "trainer"))]
fn train(_: &crate::config::TrainArgs) -> Result<()> {
    anyhow::bail!(
        "this cra was built without the trainer (it serves and scores without libxgboost); \
         build the trainer with `cargo build --release --features trainer`, then run \
         target/release/cra train"
    )
}

/// `cra train`: trains on a Parquet file and writes a verified model bundle.
#[cfg(feature = "trainer")]
fn train(args: &crate::config::TrainArgs) -> Result<()> {
    use crate::training::train::{train_file, TrainParams};
    let params = TrainParams {
        n_estimators: args.n_estimators,
        max_depth: args.max_depth,
        eta: args.eta,
        reg_alpha: args.reg_alpha,
        reg_lambda: args.reg_lambda,
        seed: args.seed,
        test_fraction: args.test_fraction,
        split: args.split,
        tree_method: args.tree_method.clone(),
        early_stopping_rounds: args.early_stopping_rounds,
        nthread: args.nthread,
        reason_codes: match &args.reason_codes {
            None => cra_model::explain::ReasonCodeTable::standard(),
            Some(path) => {
                use anyhow::Context;
                let text = std::fs::read(path)
                    .with_context(|| format!("reading the reason-code table {}", path.display()))?;
                serde_json::from_slice(&text).with_context(|| {
                    format!(
                        "{} is not a reason-code table (see models/default/reason_codes.json)",
                        path.display()
                    )
                })?
            }
        },
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let report = train_file(&args.data, &args.out, &params)?;
    let m = &report.model.metrics;
    println!(
        "trained {} trees on {} rows ({} test) in {:.1}s",
        m.num_trees,
        m.rows.train,
        m.rows.test,
        started.elapsed().as_secs_f64()
    );
    print!(
        "test AUC {:.4}  accuracy {:.4}  precision {:.4}  recall {:.4}  F1 {:.4}  KS {:.4}",
        m.eval.auc_roc, m.eval.accuracy, m.eval.precision, m.eval.recall, m.eval.f1, m.eval.ks
    );
    match m.oracle_auc {
        Some(o) => println!("  oracle AUC {o:.4}"),
        None => println!(),
    }
    println!(
        "drift reference: features of {} training rows, score of {} test rows",
        report.model.drift_reference.feature_rows, report.model.drift_reference.score_rows
    );
    println!(
        "bundle {} -> {} (verified on load)",
        report.bundle.version(),
        args.out.display()
    );
    // The model report on the same test rows, next to metrics.json (not in checksums.sha256:
    // it documents the bundle, it is not part of it).
    let source = format!(
        "the {} test rows held out from {} (seed {}, test fraction {})",
        report.model.test_rows.len(),
        args.data.display(),
        args.seed,
        args.test_fraction
    );
    let page = crate::report::write_report(
        &report.bundle,
        &report.model.test_rows,
        &report.model.test_labels,
        &source,
        &args.out.join(crate::report::REPORT_FILE),
    )?;
    println!(
        "report -> {} ({} KB)",
        page.path.display(),
        page.bytes.div_ceil(1024)
    );
    Ok(())
}

/// `cra score`: scores a Parquet file into another and prints a summary.
fn score(args: &crate::config::ScoreArgs) -> Result<()> {
    let s = crate::offline::run(args)?;
    let models: Vec<String> = s
        .by_model
        .iter()
        .map(|(v, n)| format!("{v}: {n}"))
        .collect();
    println!(
        "scored {} rows ({} invalid, named in the error column) in {:.2}s ({:.0} rows/s) -> {}; {}",
        s.rows,
        s.invalid,
        s.seconds,
        s.rows as f64 / s.seconds.max(1e-9),
        s.out.display(),
        if models.is_empty() {
            "no valid rows".to_string()
        } else {
            models.join(", ")
        }
    );
    if args.database_url.is_some() {
        println!(
            "decisions recorded with rpc = offline, stream_id = {}",
            s.run_id
        );
    }
    Ok(())
}

//! `promptd store`: move a prompts folder into an object store and back, list what a store
//! holds, verify every object against its hash, and collect unreferenced objects. The store
//! is configured as `promptd serve --store s3://…` is (the standard `AWS_*` variables).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{stream, StreamExt, TryStreamExt};

use crate::metrics::Metrics;
use crate::prompts::dir::{newest, scan, PromptSource};
use crate::prompts::ensembles::{StoredEnsemble, SUFFIX};
use crate::prompts::store::{encode, parse_stored, Store as Folder};
use crate::prompts::{parse_tensor_file, PromptLimits, TaskName};
use crate::store::manifest::{Manifest, ManifestEntry};
use crate::store::objects::Objects;
use crate::store::{Bucket, StoreError};
use crate::tune::jobs::now_ms;

/// Arguments of `promptd store`.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: StoreCommand,
}

/// `promptd store` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Copy a prompts folder (prompts and ensembles) into a store; unchanged names are kept,
    /// changed ones get the next version.
    Push {
        /// The prompts folder.
        dir: PathBuf,
        /// `s3://bucket/prefix`
        url: String,
        /// Objects uploaded at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Copy a store's prompts and ensembles into a folder (each verified against its hash).
    Pull {
        /// `s3://bucket/prefix`
        url: String,
        /// The folder (created if needed).
        dir: PathBuf,
        /// Objects downloaded at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// List the prompts, ensembles and replicas of a store.
    Ls {
        /// `s3://bucket/prefix`
        url: String,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Read every object the manifests name and check it against its hash; exit 1 on any
    /// missing or corrupt one.
    Verify {
        /// `s3://bucket/prefix`
        url: String,
        /// Objects read at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Remove objects no manifest names that are older than the grace period (left by a
    /// writer that crashed between the object and the manifest, or by replaced versions).
    Gc {
        /// `s3://bucket/prefix`
        url: String,
        /// Only objects older than this many seconds.
        #[arg(long, default_value_t = 3600)]
        grace_s: u64,
    },
}

/// The two catalogs of a store.
struct Catalogs {
    prompts: Objects,
    ensembles: Objects,
}

fn open(url: &str) -> Result<Catalogs, String> {
    if !url.starts_with("s3://") {
        return Err(format!("{url:?}: a store URL is s3://bucket/prefix"));
    }
    let metrics = Metrics::new(1);
    let bucket = Bucket::open(url, metrics.store.clone()).map_err(|e| e.to_string())?;
    let me = format!("promptd-store-{}", std::process::id());
    Ok(Catalogs {
        prompts: Objects::new(bucket.clone(), "prompts", "safetensors", me.clone()),
        ensembles: Objects::new(bucket, "ensembles", "json", me),
    })
}

/// Runs `promptd store …`.
pub fn run(args: StoreArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async move {
        match args.command {
            StoreCommand::Push {
                dir,
                url,
                concurrency,
            } => push(&dir, &open(&url)?, concurrency.max(1)).await,
            StoreCommand::Pull {
                url,
                dir,
                concurrency,
            } => pull(&open(&url)?, &dir, concurrency.max(1)).await,
            StoreCommand::Ls { url, json } => ls(&open(&url)?, json).await,
            StoreCommand::Verify { url, concurrency } => {
                verify(&open(&url)?, concurrency.max(1)).await
            }
            StoreCommand::Gc { url, grace_s } => {
                let c = open(&url)?;
                let grace = grace_s.saturating_mul(1000);
                let p = c.prompts.collect_garbage(grace).await.map_err(text)?;
                let e = c.ensembles.collect_garbage(grace).await.map_err(text)?;
                println!("removed {p} prompt objects and {e} ensemble objects");
                Ok(())
            }
        }
    })
}

fn text(e: StoreError) -> String {
    e.to_string()
}

/// A prompt's width, from its own tensor (a folder carries no model).
fn width(bytes: &[u8]) -> Result<usize, String> {
    let raw = parse_tensor_file(bytes, &PromptLimits::default()).map_err(|e| e.to_string())?;
    match raw.shape.as_slice() {
        [_, cols] => Ok(*cols as usize),
        other => Err(format!("shape {other:?} is not [rows, d_model]")),
    }
}

/// One folder item, ready to store: its name, object bytes and the version its file records.
struct Item {
    name: String,
    bytes: Bytes,
    version: Option<u64>,
}

fn folder_prompts(dir: &Path) -> Result<(Vec<Item>, Vec<String>), String> {
    let folder = Folder::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let limits = PromptLimits {
        max_rows: usize::MAX,
        max_file_bytes: usize::MAX,
        max_lora_rank: usize::MAX,
        shape: None,
    };
    let (mut items, mut skipped) = (Vec::new(), Vec::new());
    for (name, found) in scan(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let Some(found) = newest(found) else { continue };
        let loaded = (|| {
            TaskName::parse(&name).map_err(|e| e.to_string())?;
            let weights = match &found.source {
                PromptSource::TensorFile(p) => p.clone(),
                PromptSource::PeftDir(d) | PromptSource::PeftTask(d, _) => {
                    d.join("adapter_model.safetensors")
                }
            };
            let bytes = std::fs::read(&weights).map_err(|e| e.to_string())?;
            let d_model = width(&bytes)?;
            let loaded = folder
                .load(&found.source, d_model, &limits)
                .map_err(|e| e.to_string())?;
            let object = encode(&loaded.prompt, None, &loaded.sha256).map_err(|e| e.to_string())?;
            Ok::<_, String>(Item {
                name: name.clone(),
                bytes: Bytes::from(object),
                version: loaded.version,
            })
        })();
        match loaded {
            Ok(item) => items.push(item),
            Err(e) => skipped.push(format!("{}: {e}", found.source.path().display())),
        }
    }
    Ok((items, skipped))
}

fn folder_ensembles(dir: &Path) -> Result<(Vec<Item>, Vec<String>), String> {
    let (mut items, mut skipped) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SUFFIX))
            .filter(|n| !n.starts_with('.'))
            .map(str::to_string)
        else {
            continue;
        };
        let item = StoredEnsemble::read(&path).and_then(|mut stored| {
            TaskName::parse(&name).map_err(|e| e.to_string())?;
            let version = stored.version;
            stored.version = 0;
            let bytes = stored.encode().map_err(|e| e.to_string())?;
            Ok(Item {
                name: name.clone(),
                bytes: Bytes::from(bytes),
                version: (version > 0).then_some(version),
            })
        });
        match item {
            Ok(item) => items.push(item),
            Err(e) => skipped.push(format!("{}: {e}", path.display())),
        }
    }
    Ok((items, skipped))
}

/// Uploads `items` as objects, then records them all in one manifest write.
async fn push_items(
    objects: &Objects,
    items: Vec<Item>,
    concurrency: usize,
) -> Result<(usize, usize), String> {
    let uploaded: Vec<(Item, String)> = stream::iter(items)
        .map(|item| async move {
            let sha = objects.put_object(item.bytes.clone()).await?;
            Ok::<_, StoreError>((item, sha))
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
        .map_err(text)?;
    let now = now_ms();
    let mut changed = 0;
    let mut kept = 0;
    let written = objects
        .manifest_cell()
        .update(|m: &mut Manifest| {
            changed = 0;
            kept = 0;
            for (item, sha) in &uploaded {
                if m.entries.get(&item.name).is_some_and(|e| &e.object == sha) {
                    kept += 1;
                    continue;
                }
                let version = item
                    .version
                    .unwrap_or(1)
                    .max(m.last_version(&item.name) + 1);
                m.entries.insert(
                    item.name.clone(),
                    ManifestEntry {
                        version,
                        object: sha.clone(),
                        size: item.bytes.len() as u64,
                        written_at_ms: now,
                        replica: "promptd store push".into(),
                    },
                );
                changed += 1;
            }
            // Nothing new: leave the manifest (and its generation) as it is.
            if changed == 0 {
                return Err(());
            }
            Ok(())
        })
        .await;
    match written {
        Ok(_) | Err(crate::store::manifest::Refused::Change(())) => Ok((changed, kept)),
        Err(crate::store::manifest::Refused::Store(e)) => Err(e.to_string()),
    }
}

async fn push(dir: &Path, c: &Catalogs, concurrency: usize) -> Result<(), String> {
    let (prompts, mut skipped) = folder_prompts(dir)?;
    let (ensembles, skipped_e) = folder_ensembles(dir)?;
    skipped.extend(skipped_e);
    let (np, ne) = (prompts.len(), ensembles.len());
    let (p_changed, p_kept) = push_items(&c.prompts, prompts, concurrency).await?;
    let (e_changed, e_kept) = push_items(&c.ensembles, ensembles, concurrency).await?;
    for s in &skipped {
        eprintln!("skipped {s}");
    }
    println!(
        "pushed {np} prompts ({p_changed} new or changed, {p_kept} unchanged) and {ne} ensembles ({e_changed} new or changed, {e_kept} unchanged) to {}; {} skipped",
        c.prompts.bucket().url(),
        skipped.len()
    );
    if skipped.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} entries of {} were not pushed",
            skipped.len(),
            dir.display()
        ))
    }
}

async fn pull(c: &Catalogs, dir: &Path, concurrency: usize) -> Result<(), String> {
    let folder = Folder::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (prompts, _) = c.prompts.poll().await.map_err(text)?;
    let (ensembles, _) = c.ensembles.poll().await.map_err(text)?;
    let limits = PromptLimits {
        max_rows: usize::MAX,
        max_file_bytes: usize::MAX,
        max_lora_rank: usize::MAX,
        shape: None,
    };
    let mut count = (0, 0);
    for (name, entry, bytes) in read_all(&c.prompts, &prompts, concurrency)
        .await
        .map_err(text)?
    {
        let task = TaskName::parse(&name).map_err(|e| e.to_string())?;
        let loaded =
            parse_stored(&bytes, width(&bytes)?, &limits).map_err(|e| format!("{name}: {e}"))?;
        folder
            .write(&task, &loaded.prompt, entry.version, &loaded.sha256)
            .map_err(|e| format!("{name}: {e}"))?;
        count.0 += 1;
    }
    for (name, entry, bytes) in read_all(&c.ensembles, &ensembles, concurrency)
        .await
        .map_err(text)?
    {
        let mut stored = StoredEnsemble::parse(&bytes).map_err(|e| format!("{name}: {e}"))?;
        stored.version = entry.version;
        let bytes = stored.encode().map_err(|e| e.to_string())?;
        folder
            .write_file(&format!("{name}{SUFFIX}"), &bytes)
            .map_err(|e| format!("{name}: {e}"))?;
        count.1 += 1;
    }
    folder.sync_dir().map_err(|e| e.to_string())?;
    println!(
        "pulled {} prompts and {} ensembles into {}",
        count.0,
        count.1,
        dir.display()
    );
    Ok(())
}

/// Every object a manifest names, verified, with its name and entry.
async fn read_all(
    objects: &Objects,
    m: &Manifest,
    concurrency: usize,
) -> Result<Vec<(String, ManifestEntry, Bytes)>, StoreError> {
    stream::iter(m.entries.iter())
        .map(|(name, entry)| async move {
            let bytes = objects.read(&entry.object).await?;
            Ok::<_, StoreError>((name.clone(), entry.clone(), bytes))
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
}

async fn ls(c: &Catalogs, json: bool) -> Result<(), String> {
    let (prompts, _) = c.prompts.poll().await.map_err(text)?;
    let (ensembles, _) = c.ensembles.poll().await.map_err(text)?;
    let fleet =
        crate::store::fleet::Fleet::new(c.prompts.bucket().clone(), String::new(), String::new());
    let replicas = fleet.members().await.map_err(text)?;
    if json {
        let doc = serde_json::json!({
            "store": c.prompts.bucket().url(),
            "prompts": &*prompts,
            "ensembles": &*ensembles,
            "replicas": replicas,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(());
    }
    let show = |what: &str, m: &Manifest| {
        println!(
            "{what} (generation {}, {} names)",
            m.generation,
            m.entries.len()
        );
        let by_name: BTreeMap<_, _> = m.entries.iter().collect();
        for (name, e) in by_name {
            println!(
                "  {name}\tv{}\t{}\t{} bytes\tby {}",
                e.version,
                &e.object[..12.min(e.object.len())],
                e.size,
                e.replica
            );
        }
    };
    show("prompts", &prompts);
    show("ensembles", &ensembles);
    println!("replicas ({})", replicas.len());
    for r in replicas {
        println!(
            "  {}\t{}\tprompts g{}\tensembles g{}\tseen {} ms ago{}",
            r.heartbeat.replica,
            r.heartbeat.addr,
            r.heartbeat.prompts_generation,
            r.heartbeat.ensembles_generation,
            r.seen_ms_ago,
            if r.live { "" } else { " (not live)" }
        );
    }
    Ok(())
}

async fn verify(c: &Catalogs, concurrency: usize) -> Result<(), String> {
    let mut bad = Vec::new();
    let mut checked = 0;
    for objects in [&c.prompts, &c.ensembles] {
        let (m, _) = objects.poll().await.map_err(text)?;
        let results: Vec<(String, Result<Bytes, StoreError>)> = stream::iter(m.entries.iter())
            .map(|(name, e)| async move { (name.clone(), objects.read(&e.object).await) })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (name, r) in results {
            checked += 1;
            match r {
                Ok(_) => {}
                Err(e @ StoreError::Unreachable(_)) => return Err(e.to_string()),
                Err(e) => bad.push(format!("{name}: {e}")),
            }
        }
    }
    for b in &bad {
        eprintln!("BAD {b}");
    }
    println!("{checked} objects checked, {} bad", bad.len());
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("{} objects missing or corrupt", bad.len()))
    }
}

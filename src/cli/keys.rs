//! `promptd hash-key`: what goes into a tenants file's `key_sha256`.
use std::io::{BufRead, Read};

/// Arguments of `promptd hash-key`.
#[derive(Debug, Clone, clap::Args)]
pub struct HashKeyArgs {
    /// Make a new random key (256 bits from the OS) instead of reading one on stdin.
    #[arg(long)]
    pub generate: bool,
}

/// Prints `key_sha256 = "<hex>"` for the key on stdin's first line (kept off the command line,
/// where shell history and `ps` would see it), or for a new key printed above it.
pub fn run(args: HashKeyArgs) -> Result<(), String> {
    let key = if args.generate {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| format!("reading /dev/urandom: {e}"))?;
        let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("pd_{key}");
        println!("key = \"{key}\"   # give this to the tenant; it is not stored anywhere");
        key
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the key on stdin: {e}"))?;
        let key = line.trim().to_string();
        if key.is_empty() {
            return Err("no key on stdin (or use --generate)".into());
        }
        key
    };
    println!("key_sha256 = \"{}\"", crate::tenants::hash_key(&key));
    Ok(())
}

//! `carrier asyncapi`: the AsyncAPI 3.0 document of the wire contract, generated from the code.

use std::process::ExitCode;

use anyhow::Context;

/// Arguments of `carrier asyncapi`.
#[derive(clap::Args)]
pub struct AsyncApiArgs {
    /// Write it to this file instead of standard output.
    #[arg(long, short)]
    output: Option<std::path::PathBuf>,
}

pub fn main(args: AsyncApiArgs, app: &crate::App) -> anyhow::Result<ExitCode> {
    // Named after the binary: a user's document is theirs (only `carrier`'s says Carrier).
    let title = match crate::binary_name() {
        "carrier" => "Carrier",
        name => name,
    };
    let document = carrier_actors::BoundedContext::asyncapi(title, env!("CARGO_PKG_VERSION"), &app.contexts);
    let text = serde_json::to_string_pretty(&document)? + "\n";
    match args.output {
        Some(path) => std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?,
        None => {
            use std::io::Write;
            // A closed pipe (`carrier asyncapi | head`) is the reader's choice, not an error.
            match std::io::stdout().write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
